"""Admission into the engine loop, shared by every API of one server (gRPC and HTTP).

NOTE: one object per server, so draining for shutdown closes both APIs at once
and the graceful shutdown waits for the generations of both.
"""
from __future__ import annotations

import threading

from serving.engine_loop import EngineLoop, Submission


class DrainingError(Exception):
  """The server is shutting down: no new generations."""


class Admissions:
  """Submits generations to the loop and counts the ones in flight (thread-safe)."""

  def __init__(self, loop: EngineLoop):
    self._loop = loop
    self._lock = threading.Lock()
    self._inflight = 0
    self._draining = False

  def submit(self, sub: Submission) -> None:
    """Hands `sub` to the loop; raises DrainingError, or the loop's QueueFullError /
    ShuttingDownError. Each successful submit needs one `release()` when it ends."""
    with self._lock:
      if self._draining:
        raise DrainingError("server is shutting down")
      self._loop.submit(sub)
      self._inflight += 1

  def release(self) -> None:
    with self._lock:
      self._inflight -= 1

  def start_draining(self) -> None:
    """New generations are refused from now on; in-flight ones go on."""
    with self._lock:
      self._draining = True

  @property
  def draining(self) -> bool:
    with self._lock:
      return self._draining

  def num_inflight(self) -> int:
    with self._lock:
      return self._inflight
