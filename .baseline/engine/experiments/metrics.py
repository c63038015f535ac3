"""Turns a replay's raw record into the flat figures of one sweep row."""
from __future__ import annotations

import numpy as np

from engine.experiments.replay import RunLog
from engine.experiments.workload import PRODUCTS


def _pct(values: list[float], q: float) -> float | None:
  return float(np.percentile(values, q)) if values else None


def memory_metrics(log: RunLog) -> dict:
  """Waste, stranded free memory and concurrency over the run's steps (time-weighted)."""
  snaps = log.scheduler.snapshots
  ran = [s for s in snaps if s.num_decodes or s.num_prefill_tokens]
  w = np.array(log.step_seconds, float)                           # [steps that ran]
  if len(ran) != len(w):
    raise ValueError("snapshots and step durations disagree")
  alloc = np.array([s.allocated_slots for s in ran], float)
  used = np.array([s.used_slots for s in ran], float)
  running = np.array([s.num_running for s in ran], float)
  total_blocks = log.scheduler.kv.num_total_blocks
  blocked = [s for s in snaps if s.fragmentation_blocked]
  weight = w.sum() if w.sum() > 0 else 1.0
  return {
      "waste_pct": 100.0 * float(((alloc - used) * w).sum() / max((alloc * w).sum(), 1e-12)),
      "mean_alloc_pct": 100.0 * float((alloc * w).sum() / weight)
                        / (total_blocks * log.scheduler.kv.block_size),
      "peak_concurrency": int(running.max()) if len(running) else 0,
      "mean_concurrency": float((running * w).sum() / weight),
      "memory_blocked_steps": sum(s.memory_blocked for s in snaps),
      "fragmentation_blocked_steps": len(blocked),
      "stranded_free_pct_when_blocked": (
          100.0 * float(np.mean([s.free_blocks for s in blocked])) / total_blocks
          if blocked else 0.0),
      "unusable_free_pct_max": 100.0 * max((s.unusable_free_blocks for s in snaps), default=0)
                               / total_blocks,
  }


def request_metrics(log: RunLog) -> dict:
  """Failures, prefill work, cache hits, and latency percentiles per product."""
  reqs = log.scheduler.all_requests
  out = {
      "requests": len(log.requests),
      "finished": sum(1 for r in log.requests.values() if r.finish_reason == "length"),
      "failed_for_memory": sum(1 for r in log.requests.values() if r.failed_for_memory),
      "rejected": sum(1 for r in log.requests.values() if r.finish_reason == "error"),
      "preemptions": log.scheduler.num_preemptions,
      "prompt_tokens": sum(r.num_prompt_tokens for r in reqs.values()),
      "prefill_tokens_computed": sum(s.num_prefill_tokens for s in log.scheduler.snapshots),
      "prompt_tokens_from_cache": sum(r.num_cached_prompt_tokens for r in reqs.values()),
      "cross_salt_hits": log.scheduler.cross_salt_hits,
      "generated_tokens": sum(len(r.token_times) for r in log.requests.values()),
      "makespan_s": log.makespan,
      "steps": len(log.step_seconds),
  }
  out["throughput_tok_s"] = out["generated_tokens"] / log.makespan if log.makespan > 0 else None
  for product in PRODUCTS:
    logs = [r for r in log.requests.values() if r.trace.product == product and r.token_times]
    ttft = [r.token_times[0] - r.trace.arrival_time for r in logs]
    itl = [b - a for r in logs for a, b in zip(r.token_times, r.token_times[1:])]
    e2e = [r.finish_time - r.trace.arrival_time for r in logs if r.finish_time is not None]
    for name, values in (("ttft", ttft), ("itl", itl), ("e2e", e2e)):
      out[f"{product}_{name}_p50_s"] = _pct(values, 50)
      out[f"{product}_{name}_p99_s"] = _pct(values, 99)
  return out


def summarize(log: RunLog, cost_model=None) -> dict:
  """All figures of one run; attention seconds only where a cost model gives them."""
  out = {**memory_metrics(log), **request_metrics(log)}
  if cost_model is not None and log.timed_steps:
    out["attention_model_s"] = float(sum(cost_model.attention_seconds(f)
                                         for f, _ in log.timed_steps))
  return out
