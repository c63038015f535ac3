"""Where one engine decode step's device time goes (GPU): a profiler trace, summarised.

Usage: PYTHONPATH=. python -m benchmarks.profile_step [--model llama3.2-1b] [--batch 64]
           [--ctx 256] [--steps 5] [--decode-steps 1] [--attention-backend triton]
           [--out DIR]

Runs `--steps` back-to-back decode steps of the engine's own runner (same inputs as
benchmarks/throughput.py) under `jax.profiler`, then reads the Perfetto trace and prints:
wall time per step, GPU busy time per step (the union of kernel intervals on the device's
streams), the idle share, and the kernels grouped by name (time per step, calls per step).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from benchmarks.throughput import decode_engine, decode_inputs
from pallas_kernels.backend import KNOWN_BACKENDS


def load_trace(trace_dir: str) -> list[dict]:
  paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    return json.load(f)["traceEvents"]


def device_events(events: list[dict]) -> list[dict]:
  """Complete events ("X") of the processes whose name names a GPU device."""
  gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
              and re.search(r"/device:GPU", str(e.get("args", {}).get("name", "")))}
  return [e for e in events if e.get("ph") == "X" and e.get("pid") in gpu_pids and "dur" in e]


def busy_time(events: list[dict]) -> float:
  """Microseconds covered by at least one event (the union of their intervals)."""
  total, end = 0.0, float("-inf")
  for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarise(events: list[dict], steps: int, wall_s: float, top: int = 25) -> dict:
  kernels = device_events(events)
  processes = sorted({str(e.get("args", {}).get("name")) for e in events
                      if e.get("ph") == "M" and e.get("name") == "process_name"})
  by_name: dict[str, list[float]] = collections.defaultdict(list)
  for e in kernels:
    by_name[e["name"]].append(e["dur"])
  rows = sorted(((sum(d), len(d), n) for n, d in by_name.items()), reverse=True)
  span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) if kernels \
      else 0.0
  busy = busy_time(kernels)
  return {
      "steps": steps, "wall_ms_per_step": 1e3 * wall_s / steps,
      "gpu_busy_ms_per_step": busy / 1e3 / steps,
      "gpu_span_ms_per_step": span / 1e3 / steps,
      "idle_in_span": 1 - busy / span if span else None,
      "kernels_per_step": len(kernels) / steps, "processes": processes,
      "top": [{"name": n[:120], "ms_per_step": round(t / 1e3 / steps, 4),
               "calls_per_step": c / steps} for t, c, n in rows[:top]]}


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="llama3.2-1b")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--ctx", type=int, default=256)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--decode-steps", type=int, default=1,
                  help="decode iterations per step (the engine's num_decode_steps)")
  ap.add_argument("--attention-backend", default=None, choices=KNOWN_BACKENDS,
                  help="kernels' backend (default: the platform's, pallas_kernels.backend)")
  ap.add_argument("--out", default=None, help="folder for profile_<model>_b<batch>.json")
  args = ap.parse_args()
  llm, _ = decode_engine(args.model, args.batch, args.ctx, args.dtype,
                         backend=args.attention_backend)
  runner, k = llm.engine.runner, args.decode_steps
  x = decode_inputs(runner, args.batch, args.ctx, k)
  for _ in range(3):
    jax.block_until_ready(runner._run_decode(x, steps=k))
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      out = runner._run_decode(x, steps=k)
    jax.block_until_ready(out)
    wall = time.perf_counter() - t0
  res = summarise(load_trace(trace_dir), args.steps, wall)
  res.update(model=args.model, batch=args.batch, ctx=args.ctx, decode_steps=k,
             device=jax.devices()[0].device_kind)
  print(json.dumps(res, indent=1))
  if args.out:
    name = f"profile_{args.model}_b{args.batch}" + (f"_k{k}" if k > 1 else "")
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
