"""Ahead-of-time compiled steps: lowered one by one, compiled on a thread pool, shared.

The runner dispatches every step through a `jax.stages.Compiled` (on CPU it
costs no more host time per call than the jitted function; see
`ModelRunner._run`). Warm-up lowers each planned step shape (`buckets.plan`) in
the calling thread, since tracing holds the GIL, and compiles them on a thread
pool, since XLA releases the GIL while it compiles.

Runners built on the same memoized steps (`make_steps`) share one table of
executables per step, keyed by the full abstract signature of the arguments,
so an engine with the same shapes compiles nothing and one with another cache
shape never gets an executable compiled for someone else's.
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import threading

import jax

MAX_DEFAULT_THREADS = 32    # NOTE: each XLA compile of a large model holds GBs of host memory

# NOTE: XLA:GPU's command-buffer (CUDA graph) command types: its defaults
# (FUSION … DYNAMIC_SLICE_FUSION, restated: the option replaces the list) plus
# CONDITIONAL and WHILE. Outside a CUDA graph a conditional copies its branch
# index to the host and blocks the dispatching thread until the device gets
# there, which would serialise the host loop with every step (the sampler's
# `lax.cond`s, engine/sampler.py). Measured on an H200 (2026-12-01; a 32-step
# fori_loop of 256x8192x8192 bf16 GEMMs, then the sampler's two nested conds):
# dispatch returned after 1.5-4.4 ms without, about the whole step; 0.3-1.0 ms
# with both; CONDITIONAL alone still blocked. The loop without conds: 1.82 ms a
# step, 2.00 with both types (the loop runs on the device), 2.1-2.2 with conds.
_GPU_COMMAND_BUFFER = ("FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,"
                       "CONDITIONAL,WHILE")
# NOTE: cuBLAS, not XLA's Triton GEMM fusions, for the steps' matmuls: the decoder layers
# run in a loop over stacked weights (models/llama.py), and a Triton GEMM fusion cannot read
# its layer's slice in place, so XLA copied every layer's four weight matrices before their
# GEMMs (`memcpy128`, 128 calls and 6.7 ms of a 12.6 ms Llama-3-8B decode step at batch 64
# on an H200, 2026-12-01); cuBLAS reads them at their offset. Same day and device: 12.6 ->
# 5.4 ms per decode step at batch 64, 15.8 -> 9.2 ms at batch 256 (docs/benchmarks.md).
_GPU_OPTIONS = {"xla_gpu_enable_command_buffer": _GPU_COMMAND_BUFFER,
                "xla_gpu_enable_triton_gemm": False}


def compiler_options(platform: str) -> dict[str, str] | None:
  """XLA options the steps compile with on `platform` (a jax Device.platform).

  `$PAGEDJAX_XLA_OPTIONS` (a JSON object of XLA debug options, e.g.
  '{"xla_gpu_enable_dynamic_slice_fusion": true}') is merged on top, for measuring
  alternatives (benchmarks) without editing this table.
  """
  options = dict(_GPU_OPTIONS) if platform in ("gpu", "cuda") else {}
  options.update(json.loads(os.environ.get("PAGEDJAX_XLA_OPTIONS") or "{}"))
  return options or None


def default_threads() -> int:
  """One compile thread per CPU core this process may run on, at most MAX_DEFAULT_THREADS."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, MAX_DEFAULT_THREADS))


def signature(args) -> tuple:
  """Tree structure plus each leaf's shape, dtype, weak type and sharding (None on the host)."""
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((jax.typeof(a), getattr(a, "sharding", None)) for a in leaves)


class SharedExecutables:
  """The executables of one memoized step, keyed by (layout, mode, signature).

  NOTE: two engines may run in two threads; the lock makes get/put atomic. Two
  runners that miss at once both compile, and both use the first one stored.
  """

  def __init__(self):
    self._table: dict[tuple, jax.stages.Compiled] = {}
    self._lock = threading.Lock()

  def get(self, key: tuple) -> jax.stages.Compiled | None:
    with self._lock:
      return self._table.get(key)

  def put(self, key: tuple, executable: jax.stages.Compiled) -> jax.stages.Compiled:
    """Stores `executable` unless one is stored already; returns the stored one."""
    with self._lock:
      return self._table.setdefault(key, executable)


@functools.lru_cache(maxsize=None)
def shared(step) -> SharedExecutables:
  """The table of a jitted step (memoized like the step: per model config, backend and mesh)."""
  return SharedExecutables()


def done(value) -> concurrent.futures.Future:
  """A future that already holds `value`."""
  future = concurrent.futures.Future()
  future.set_result(value)
  return future


class _Inline:
  """A one-thread "pool": compiles in the caller, one at a time."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def submit(self, fn, *args) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:       # NOTE: raised again by future.result(), as a pool would
      future.set_exception(e)
    return future


def compiler(threads: int):
  """A context manager yielding an executor to submit `lowered.compile` to; exiting waits."""
  if threads < 1:
    raise ValueError(f"threads must be >= 1, got {threads}")
  if threads == 1:
    return _Inline()
  return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="xla-compile")
