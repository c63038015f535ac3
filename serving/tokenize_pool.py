"""A bounded pool for tokenization, so it cannot take over the server.

Chat-template rendering and tokenization run on a few dedicated threads, not
on the gRPC handler threads that stream answers and answer health checks. At
most `workers` of them run at once and `max_queued` more wait; past that a
caller gets `PoolFullError` (the servicer answers RESOURCE_EXHAUSTED) at once.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class PoolFullError(Exception):
  """Every worker is busy and the queue is full; retry later."""


class BoundedPool:
  """`run(fn, *args)` on a worker thread; blocks the caller until it is done."""

  def __init__(self, workers: int, max_queued: int, name: str = "tokenize"):
    if workers < 1 or max_queued < 0:
      raise ValueError(f"need workers >= 1 and max_queued >= 0, got {workers}, {max_queued}")
    self._name = name
    self._capacity = workers + max_queued
    self._slots = threading.BoundedSemaphore(self._capacity)
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)

  def run(self, fn: Callable[..., T], *args) -> T:
    """fn(*args)'s result (or its exception); PoolFullError if no slot is free."""
    return self.submit(fn, *args).result()

  def submit(self, fn: Callable[..., T], *args) -> concurrent.futures.Future:
    """fn(*args) on a worker, as a future (for asyncio callers); PoolFullError if full."""
    if not self._slots.acquire(blocking=False):
      raise PoolFullError(f"server is busy: {self._capacity} {self._name} jobs already running "
                          "or queued; retry later")
    try:
      future = self._pool.submit(fn, *args)
    except BaseException:
      self._slots.release()
      raise
    # NOTE: the slot is freed when the work ends, not when the caller stops
    # waiting, so the bound holds for work still running.
    future.add_done_callback(lambda _: self._slots.release())
    return future

  def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
    self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
