"""`pagedjax batch`: offline generation over a JSONL file of prompts.

Each input line: {"id": ..., "prompt": "..."} or {"id": ..., "messages": [...]},
optionally with sampling fields (temperature, top_p, top_k, min_p, seed,
max_tokens, stop, stop_token_ids, ignore_eos, logprobs), "cache_salt" and
"priority". A "prompt" is a user message and gets the model's chat template,
as in `pagedjax generate` (raw text with --no-chat-template); sampling flags
and fields default to greedy, 128 tokens. Each output line: {"id", "text",
"token_ids", "finish_reason", "usage"} or {"id", "line", "error"}. Results
are flushed as requests finish; rerunning with the same --output skips the
ids already there (error results included), so an interrupted run loses
nothing. Both files are checked, and a rerun with nothing left to do ends,
before the model is loaded.

exit status:
  0    every input line has a successful result in the output
  3    some lines have an error result in the output (this run or an earlier one)
  2    bad flags or files (nothing was run)
  130  interrupted (Ctrl-C / SIGTERM): rerun the same command to finish

example:
  pagedjax batch --input prompts.jsonl --output results.jsonl --max-tokens 256
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from serving.engine_flags import add_engine_args, engine_config_from_args
from serving.progress import add_progress_arg, engine_lines, load_engine
from serving.prompt_flags import add_chat_template_arg
from serving.sampling_flags import (add_sampling_args, sampling_kwargs_from_args,
                                    sampling_params_from_args)

NAME = "batch"
HELP = "generate for every line of a JSONL file, writing JSONL results (resumable)"
EXIT_LINE_ERRORS = 3
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", required=True, help="JSONL file of requests (required)")
  parser.add_argument("--output", required=True,
                      help="JSONL results; appended to, ids already there are skipped "
                           "(required; must not be the input)")
  parser.add_argument("--window", type=int, default=None,
                      help="most requests inside the engine at once "
                           "(default: 4 x --max-num-seqs)")
  add_chat_template_arg(parser, 'a line\'s "prompt"')
  add_progress_arg(parser, "loading progress and a progress bar")
  add_sampling_args(parser)
  add_engine_args(parser)


def run(args: argparse.Namespace) -> int:
  from serving.batch_runner import plan_batch

  if not os.path.isfile(args.input):
    raise ValueError(f"--input {args.input!r} is not a file")
  defaults = sampling_kwargs_from_args(args)
  sampling_params_from_args(args)     # NOTE: bad flag values fail before the model loads
  config = engine_config_from_args(args)
  try:
    plan = plan_batch(args.input, args.output)
  except OSError as e:
    flag, verb = (("--input", "read") if e.filename == args.input else ("--output", "write"))
    raise ValueError(f"cannot {verb} {flag} {e.filename!r}: {e.strerror or e}") from None
  try:
    summary = _run_plan(args, plan, defaults, config) if plan.todo else plan.summary
  finally:
    plan.close()
  print(summary.describe(), file=sys.stderr)
  if summary.interrupted:
    return EXIT_INTERRUPTED
  return EXIT_LINE_ERRORS if summary.any_errors else 0


def _run_plan(args, plan, defaults, config):
  from serving.batch_runner import run_plan

  with engine_lines(args.progress):
    engine = load_engine(lambda: _engine(config), config, args.progress)
    with _stop_on_signals() as stop:
      return run_plan(engine, plan, defaults, window=args.window, progress=args.progress,
                      stop=stop, chat_template=args.chat_template)


def _engine(config):
  from engine import LLMEngine                     # NOTE: lazy: JAX import
  return LLMEngine(config)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
  """Ctrl-C/SIGTERM stop the run between two engine steps (nothing is torn);
  a second Ctrl-C interrupts at once. The old handlers come back afterwards."""
  stop = threading.Event()

  def handler(signum, frame):
    if stop.is_set():
      raise KeyboardInterrupt
    stop.set()
  saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield stop
  finally:
    for sig, old in saved.items():
      signal.signal(sig, old)
