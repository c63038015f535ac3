"""Measurement helpers shared by the GPU benchmarks (timing, errors, guards)."""

from __future__ import annotations

import time
import traceback

import jax
import numpy as np


def timed(f, *args, iters=20):
  """Median device time of f(*args) in µs (CUPTI kernel time, else wall)."""
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  try:
    from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
    _, times = profiler.measure(f, iterations=iters)(*args)
    return float(np.median(times)) * 1e3
  except Exception:  # pylint: disable=broad-except
    t0 = time.perf_counter()
    for _ in range(iters):
      out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters * 1e6


def guarded(fn, limit=300):
  """fn() or the exception's text, so one failure doesn't end the run.

  With limit > 300 the text is the one-line summary, then the last `limit`
  characters of the traceback (Mosaic GPU compile errors carry the failing
  op near its end).
  """
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    summary = f"{type(e).__name__}: {str(e)[:300]}".splitlines()[0]
    if limit > 300:
      return summary + "\n" + traceback.format_exc()[-limit:]
    return f"{type(e).__name__}: {str(e)[:limit]}"


def rel_err(out, ref):
  out = np.asarray(out, np.float32)
  ref = np.asarray(ref, np.float32)
  assert np.isfinite(out).all(), "non-finite output"
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
