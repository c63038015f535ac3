"""How close the simulator is to the real engine: row-by-row differences of two sweeps."""
from __future__ import annotations

from typing import Sequence

EXACT = ("finished", "failed_for_memory", "rejected", "preemptions", "prefill_tokens_computed",
         "prompt_tokens_from_cache", "peak_concurrency", "generated_tokens")
TIMED = ("makespan_s", "throughput_tok_s", "chat_ttft_p50_s", "chat_itl_p50_s",
         "report_ttft_p50_s", "report_itl_p50_s", "report_e2e_p50_s", "waste_pct",
         "mean_concurrency")


def _key(row: dict) -> tuple:
  return row["mode"], row["block_size"]


def compare(real: Sequence[dict], sim: Sequence[dict]) -> list[dict]:
  """For each run in both: exact-count mismatches and relative error of timed figures."""
  sims = {_key(r): r for r in sim}
  out = []
  for r in real:
    s = sims.get(_key(r))
    if s is None:
      continue
    row = {"mode": r["mode"], "block_size": r["block_size"],
           "count_mismatches": [k for k in EXACT if r.get(k) != s.get(k)]}
    for k in TIMED:
      a, b = r.get(k), s.get(k)
      row[f"{k}_rel_err"] = (abs(b - a) / abs(a)) if a and b is not None else None
    out.append(row)
  return out
