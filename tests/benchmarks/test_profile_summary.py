"""benchmarks/profile_step.py's trace summary on synthetic Perfetto events (no GPU needed)."""
from __future__ import annotations

import pytest

from benchmarks.profile_step import busy_time, device_events, summarise


def _meta(pid: int, name: str) -> dict:
  return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}


def _x(pid: int, name: str, ts: float, dur: float) -> dict:
  return {"ph": "X", "pid": pid, "tid": 1, "name": name, "ts": ts, "dur": dur}


EVENTS = [
    _meta(1, "/host:CPU"), _meta(7, "/device:GPU:0"),
    _x(1, "python_dispatch", 0, 500),                 # host: never counted as GPU time
    _x(7, "gemm", 0, 10), _x(7, "gemm", 30, 10),
    _x(7, "attn", 5, 10),                             # overlaps the first gemm by 5
    _x(7, "norm", 50, 2),
]


def test_busy_time_is_the_union_of_intervals():
  assert busy_time([_x(7, "a", 0, 10), _x(7, "b", 5, 10), _x(7, "c", 20, 1)]) == 16
  assert busy_time([]) == 0


def test_summary_counts_device_kernels_only():
  assert [e["name"] for e in device_events(EVENTS)] == ["gemm", "gemm", "attn", "norm"]
  s = summarise(EVENTS, steps=2, wall_s=0.001)
  assert s["gpu_busy_ms_per_step"] == pytest.approx((15 + 10 + 2) / 1e3 / 2)
  assert s["gpu_span_ms_per_step"] == pytest.approx(52 / 1e3 / 2)
  assert s["idle_in_span"] == pytest.approx(1 - 27 / 52)
  assert s["kernels_per_step"] == 2
  assert [t["name"] for t in s["top"]] == ["gemm", "attn", "norm"]
  assert s["top"][0] == {"name": "gemm", "ms_per_step": 0.01, "calls_per_step": 1.0}
  assert s["wall_ms_per_step"] == pytest.approx(0.5)
