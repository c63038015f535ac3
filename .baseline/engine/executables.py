"""Ahead-of-time compiled steps: lowered one by one, compiled on a thread pool, shared.

The runner dispatches every step through a `jax.stages.Compiled` (on CPU it
costs no more host time per call than the jitted function; see
`ModelRunner._run`). Warm-up lowers each (bucket shape, sampler mode) in the
calling thread, since tracing holds the GIL, and compiles them on a thread
pool, since XLA releases the GIL while it compiles.

Runners built on the same memoized steps (`make_steps`) share one table of
executables per step, keyed by the full abstract signature of the arguments,
so an engine with the same shapes compiles nothing and one with another cache
shape never gets an executable compiled for someone else's.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import threading

import jax

MAX_DEFAULT_THREADS = 32    # NOTE: each XLA compile of a large model holds GBs of host memory


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
