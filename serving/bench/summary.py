"""The benchmark's figures: throughput, TTFT, TPOT, ITL and goodput against SLOs."""
from __future__ import annotations

import dataclasses

import numpy as np

from serving.bench.result import RequestResult


@dataclasses.dataclass(frozen=True)
class Slo:
  """Service-level objectives in seconds; None: not required."""
  ttft_s: float | None = None
  tpot_s: float | None = None

  def met(self, r: RequestResult) -> bool:
    if self.ttft_s is not None and r.ttft > self.ttft_s:
      return False
    tpot = r.tpot
    return self.tpot_s is None or tpot is None or tpot <= self.tpot_s


def stats_ms(values_s: list[float]) -> dict[str, float | None]:
  """Mean, median and p99 in milliseconds (None when there are no values)."""
  if not values_s:
    return {"mean_ms": None, "median_ms": None, "p99_ms": None}
  a = np.asarray(values_s) * 1e3
  return {"mean_ms": float(a.mean()), "median_ms": float(np.median(a)),
          "p99_ms": float(np.percentile(a, 99))}


def summarize(results: list[RequestResult], duration_s: float, slo: Slo) -> dict:
  """Figures over the successful requests; `duration_s` is the run's wall time."""
  ok = [r for r in results if r.ok]
  out_tokens = sum(r.output_tokens for r in ok)
  in_tokens = sum(r.prompt_tokens or 0 for r in ok)
  good = sum(slo.met(r) for r in ok)
  summary = {
      "num_requests": len(results), "completed": len(ok), "failed": len(results) - len(ok),
      "duration_s": duration_s, "total_input_tokens": in_tokens,
      "total_output_tokens": out_tokens,
      "request_throughput": len(ok) / duration_s,
      "output_throughput": out_tokens / duration_s,
      "total_token_throughput": (in_tokens + out_tokens) / duration_s,
      "ttft": stats_ms([r.ttft for r in ok]),
      "tpot": stats_ms([t for t in (r.tpot for r in ok) if t is not None]),
      "itl": stats_ms([g for r in ok for g in r.itls]),
      "e2e_latency": stats_ms([r.latency for r in ok]),
      "slo": {"ttft_ms": None if slo.ttft_s is None else slo.ttft_s * 1e3,
              "tpot_ms": None if slo.tpot_s is None else slo.tpot_s * 1e3},
      "good_requests": good,
      "goodput": good / duration_s,
      "errors": sorted({r.error for r in results if r.error})[:5],
  }
  return summary
