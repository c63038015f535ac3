"""`pagedjax batch`: offline generation over a JSONL file of prompts.

Each input line: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]},
optionally with sampling fields (temperature, top_p, top_k, min_p, seed,
max_tokens, stop, stop_token_ids, ignore_eos, logprobs), "cache_salt" and
"priority". Each output line: {"id", "text", "token_ids", "finish_reason",
"usage"} or {"id", "error"}. Results are flushed as requests finish; rerunning
with the same --output skips the ids already there, so an interrupted run
loses nothing.

example:
  pagedjax batch --input prompts.jsonl --output results.jsonl --temperature 0 --max-tokens 128
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from serving.engine_flags import add_engine_args, engine_config_from_args
from serving.sampling_flags import add_sampling_args, sampling_kwargs_from_args

NAME = "batch"
HELP = "generate for every line of a JSONL file, writing JSONL results (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", required=True, help="JSONL file of requests")
  parser.add_argument("--output", required=True,
                      help="JSONL results; appended to, ids already there are skipped")
  parser.add_argument("--window", type=int, default=None,
                      help="most requests inside the engine at once (default 4 x max-num-seqs)")
  parser.add_argument("--no-progress", dest="progress", action="store_false",
                      help="hide the progress bar")
  add_sampling_args(parser)
  add_engine_args(parser)


def run(args: argparse.Namespace) -> int:
  from engine import LLMEngine                     # NOTE: lazy: JAX import
  from serving.batch_runner import run_batch
  from serving.request_convert import checked_sampling_params

  if not os.path.isfile(args.input):
    raise ValueError(f"--input {args.input!r} is not a file")
  defaults = sampling_kwargs_from_args(args)
  checked_sampling_params(defaults)  # NOTE: bad flag values fail before the model loads.
  engine = LLMEngine(engine_config_from_args(args))
  stop = threading.Event()
  _stop_on_signals(stop)
  summary = run_batch(engine, args.input, args.output, defaults, window=args.window,
                      progress=args.progress, stop=stop)
  print(summary.describe(), file=sys.stderr)
  return 130 if summary.interrupted else 0


def _stop_on_signals(stop: threading.Event) -> None:
  """Ctrl-C/SIGTERM stop the run between two engine steps (nothing is torn);
  a second Ctrl-C interrupts at once."""
  def handler(signum, frame):
    if stop.is_set():
      raise KeyboardInterrupt
    stop.set()
  signal.signal(signal.SIGINT, handler)
  signal.signal(signal.SIGTERM, handler)
