"""`pagedjax sweep` and `simulate`: a SweepConfig from parsed flags; a sweep's outputs and table."""
from __future__ import annotations

import argparse
import datetime

from engine.config import EngineConfig
from research import report
from research.replay import ReplayOptions
from research.sweep import SweepConfig
from research.workload import TraceRequest, summarize
from serving.commands.sweep_flags import chunked_of


def sweep_config_from_args(args: argparse.Namespace, kv_budget_bytes: int, max_model_len: int,
                           model: str | None, dtype: str) -> SweepConfig:
  base = EngineConfig(model=model, dtype=dtype, max_batch_tokens=args.max_batch_tokens,
                      max_num_seqs=args.max_num_seqs, max_model_len=max_model_len,
                      watermark=args.watermark, num_decode_steps=args.num_decode_steps,
                      allow_small_kv_cache=True)
  return SweepConfig(kv_budget_bytes=kv_budget_bytes, block_sizes=tuple(args.block_sizes),
                     modes=tuple(args.modes), chunked_prefill=chunked_of(args),
                     kv_cache_dtypes=tuple(args.kv_cache_dtypes), base=base,
                     replay=ReplayOptions(clock=args.clock, step_dt=args.step_dt,
                                          queue_timeout_s=args.queue_timeout))


def write_outputs(args: argparse.Namespace, rows: list[dict], stem: str,
                  trace: list[TraceRequest], meta: dict, plots: bool = True) -> list[str]:
  """CSV + JSON (+ PNG plots) under args.out; returns the written paths."""
  meta = {"date": datetime.date.today().isoformat(), "trace": summarize(trace),
          "num_requests": len(trace), **meta}
  paths = list(report.write_rows(rows, args.out, stem, meta))
  if plots and not args.no_plots:
    paths += report.plot_rows(rows, args.out, stem, f"{stem}: {meta.get('title', '')}")
  return paths


TABLE_COLUMNS = ("mode", "block_size", "kv_cache_dtype", "num_blocks", "waste_pct",
                 "stranded_free_pct_when_blocked", "mean_concurrency", "failed_for_memory",
                 "preemptions", "prefill_tokens_computed", "chat_itl_p99_s", "report_itl_p99_s",
                 "report_ttft_p99_s", "throughput_tok_s")


def format_table(rows: list[dict], cols: tuple[str, ...] = TABLE_COLUMNS) -> str:
  """The figures the case study uses, one row per run; no header or cell is cut."""
  cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in
            (row.get(c) for c in cols)] for row in rows]
  widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
  lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
  return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
  print(format_table(rows))
