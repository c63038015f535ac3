"""Command-line flags shared by `pagedjax sweep` and `pagedjax simulate`.

Kept free of JAX imports so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

from engine.experiments.workload import TraceRequest, WorkloadConfig, generate, read_trace


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
  return tuple(x.strip() for x in text.split(",") if x.strip())


def add_workload_args(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("workload (ignored with --trace)")
  g.add_argument("--trace", help="replay this JSONL trace instead of generating one")
  g.add_argument("--save-trace", help="write the generated trace to this JSONL file")
  d = WorkloadConfig()
  for name, kind, text in (
      ("num_requests", int, "requests in the trace"),
      ("rate", float, "Poisson arrival rate (requests/s)"),
      ("chat_fraction", float, "share of chat requests (the rest are reports)"),
      ("system_prompt_len", int, "tokens of the shared system prompt"),
      ("num_system_prompts", int, "distinct system prompts"),
      ("num_tenants", int, "tenants; each is its own cache_salt"),
      ("chat_output_len", int, "mean chat output tokens"),
      ("report_output_len", int, "mean report output tokens"),
      ("scale", float, "multiplies every length (CPU runs use < 1)"),
      ("seed", int, "workload seed")):
    g.add_argument("--" + name.replace("_", "-"), dest="wl_" + name, type=kind,
                   default=getattr(d, name), help=f"{text} (default {getattr(d, name)})")
  g.add_argument("--no-salt", action="store_true",
                 help="give every request cache_salt=None (one shared prefix cache)")


def trace_from_args(args: argparse.Namespace) -> list[TraceRequest]:
  if args.trace:
    return read_trace(args.trace)
  kwargs = {f.name: getattr(args, "wl_" + f.name) for f in dataclasses.fields(WorkloadConfig)
            if hasattr(args, "wl_" + f.name)}
  trace = generate(WorkloadConfig(salt_by_tenant=not args.no_salt, **kwargs))
  if args.save_trace:
    from engine.experiments.workload import write_trace
    os.makedirs(os.path.dirname(os.path.abspath(args.save_trace)), exist_ok=True)
    write_trace(args.save_trace, trace)
  return trace


def add_grid_args(parser: argparse.ArgumentParser, default_block_sizes: str) -> None:
  g = parser.add_argument_group("grid")
  g.add_argument("--block-sizes", type=_ints, default=_ints(default_block_sizes),
                 help=f"comma-separated block sizes (default {default_block_sizes})")
  g.add_argument("--modes", type=_names, default=("contiguous", "paged", "paged+prefix"),
                 help="comma-separated: contiguous, paged, paged+prefix (default: all)")
  g.add_argument("--chunked", choices=("both", "on", "off"), default="both",
                 help="chunked prefill on, off, or both (default both)")
  g.add_argument("--max-batch-tokens", type=int, default=512, help="per-step token budget")
  g.add_argument("--max-num-seqs", type=int, default=64, help="running requests at most")
  g.add_argument("--max-model-len", type=int, default=None,
                 help="context limit (default: the trace's longest request, rounded up to 256)")
  g.add_argument("--watermark", type=float, default=0.01, help="admission watermark")
  r = parser.add_argument_group("replay")
  r.add_argument("--clock", choices=("steps", "measured"), default="measured",
                 help="advance time per step by --step-dt, or by the step's duration")
  r.add_argument("--step-dt", type=float, default=0.05, help="seconds per step (clock=steps)")
  r.add_argument("--queue-timeout", type=float, default=None,
                 help="fail requests not started within this many seconds (gateway OOM)")
  parser.add_argument("--out", default="sweep_out", help="output folder (CSV, JSON, PNG)")
  parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def chunked_of(args: argparse.Namespace) -> tuple[bool, ...]:
  return {"both": (True, False), "on": (True,), "off": (False,)}[args.chunked]


def max_model_len_of(args: argparse.Namespace, trace: list[TraceRequest], limit: int) -> int:
  if args.max_model_len:
    return args.max_model_len
  longest = max(r.total_len for r in trace)
  return min(limit, -(-longest // 256) * 256)
