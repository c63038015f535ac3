"""Builds a SweepConfig from parsed flags and writes a sweep's outputs."""
from __future__ import annotations

import argparse
import datetime

from engine.config import EngineConfig
from engine.experiments import report
from engine.experiments.cli_args import chunked_of
from engine.experiments.replay import ReplayOptions
from engine.experiments.sweep import SweepConfig
from engine.experiments.workload import TraceRequest, summarize


def sweep_config_from_args(args: argparse.Namespace, kv_budget_bytes: int, max_model_len: int,
                           model: str | None, dtype: str) -> SweepConfig:
  base = EngineConfig(model=model, dtype=dtype, max_batch_tokens=args.max_batch_tokens,
                      max_num_seqs=args.max_num_seqs, max_model_len=max_model_len,
                      watermark=args.watermark)
  return SweepConfig(kv_budget_bytes=kv_budget_bytes, block_sizes=tuple(args.block_sizes),
                     modes=tuple(args.modes), chunked_prefill=chunked_of(args), base=base,
                     replay=ReplayOptions(clock=args.clock, step_dt=args.step_dt,
                                          queue_timeout_s=args.queue_timeout))


def write_outputs(args: argparse.Namespace, rows: list[dict], stem: str,
                  trace: list[TraceRequest], meta: dict) -> list[str]:
  """CSV + JSON (+ PNG plots) under args.out; returns the written paths."""
  meta = {"date": datetime.date.today().isoformat(), "trace": summarize(trace),
          "num_requests": len(trace), **meta}
  paths = list(report.write_rows(rows, args.out, stem, meta))
  if not args.no_plots:
    paths += report.plot_rows(rows, args.out, stem, f"{stem}: {meta.get('title', '')}")
  return paths


def print_table(rows: list[dict]) -> None:
  """A compact summary of the figures the case study uses."""
  cols = ("mode", "block_size", "num_blocks", "waste_pct", "stranded_free_pct_when_blocked",
          "mean_concurrency", "failed_for_memory", "preemptions", "prefill_tokens_computed",
          "chat_itl_p99_s", "report_itl_p99_s", "report_ttft_p99_s", "throughput_tok_s")
  print("  ".join(c[:14].rjust(14) for c in cols))
  for row in rows:
    cells = []
    for c in cols:
      v = row.get(c)
      cells.append(f"{v:14.4g}" if isinstance(v, float) else str(v)[:14].rjust(14))
    print("  ".join(cells))
