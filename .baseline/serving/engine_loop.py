"""The engine loop: the one thread that drives an `LLMEngine` for a server.

gRPC handlers never touch the engine. They `submit()` a request (and maybe
`abort()` it) through a thread-safe queue and read their own per-request
queue of `Event`s. Each loop iteration drains the submission queue (adds and
aborts), calls `engine.step()`, routes the deltas to the per-request queues and
publishes the engine's stats to the metrics.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import threading
import time
from typing import Any

from engine.outputs import TokenDelta
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.05       # how long an idle loop blocks on the submission queue
_STOP_MAX_STEPS = 10_000  # steps to flush aborted requests when stopping


class QueueFullError(Exception):
  """The waiting queue is at its bound; the caller should retry later."""


class ShuttingDownError(Exception):
  """The loop is stopping and takes no new requests."""


class RejectKind(enum.Enum):
  INVALID_ARGUMENT = "invalid_argument"   # the engine refused the request
  INTERNAL = "internal"                   # the engine failed while running it
  UNAVAILABLE = "unavailable"             # the loop stopped before it finished


@dataclasses.dataclass(frozen=True)
class Event:
  """One item of a request's output queue: a delta, or a rejection (final)."""
  delta: TokenDelta | None = None
  reject_kind: RejectKind | None = None
  reject_message: str = ""
  ttft_s: float | None = None   # server-side time to first token, once known


@dataclasses.dataclass
class Submission:
  """A validated request, ready for `engine.add_request`."""
  request_id: str                  # NOTE: unique engine id, chosen by the server
  prompt_token_ids: list[int]
  sampling_params: Any             # engine.SamplingParams
  cache_salt: str | None = None
  priority: int = 0
  received_at: float = dataclasses.field(default_factory=time.monotonic)
  outputs: queue.Queue = dataclasses.field(default_factory=queue.Queue)


@dataclasses.dataclass
class _Track:
  sub: Submission
  first_token_at: float | None = None
  last_token_at: float | None = None


class EngineLoop:
  """Owns an `LLMEngine` and runs it on a daemon thread.

  NOTE: only the loop thread calls the engine (it is not thread-safe);
  `submit`, `abort`, `stop` and `num_waiting` may be called from any thread.
  """

  def __init__(self, engine, metrics: ServingMetrics, max_waiting: int):
    if max_waiting < 1:
      raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
    self._engine = engine
    self._metrics = metrics
    self._max_waiting = max_waiting
    self._commands: queue.Queue = queue.Queue()
    self._lock = threading.Lock()
    self._pending = 0          # submitted, not yet handed to the engine
    self._engine_waiting = 0   # engine's num_waiting after the last add/step
    self._stopping = False
    self._active: dict[str, _Track] = {}   # loop thread only
    self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

  def start(self) -> None:
    self._metrics.observe_stats(self._engine.stats())
    self._thread.start()

  def submit(self, sub: Submission) -> None:
    """Queues `sub`; its events will arrive on `sub.outputs`.

    Raises QueueFullError past `max_waiting` waiting requests and
    ShuttingDownError once `stop()` was called.
    """
    with self._lock:
      if self._stopping:
        raise ShuttingDownError("server is shutting down")
      waiting = self._pending + self._engine_waiting
      if waiting >= self._max_waiting:
        raise QueueFullError(
            f"server is at capacity: {waiting} requests already waiting "
            f"(--max-waiting={self._max_waiting}); retry later")
      self._pending += 1
      self._commands.put(("add", sub))

  def abort(self, request_id: str) -> None:
    """Aborts a request at the next step (no-op if it already finished)."""
    self._commands.put(("abort", request_id))

  def num_waiting(self) -> int:
    with self._lock:
      return self._pending + self._engine_waiting

  def stop(self, timeout: float | None = 30.0) -> None:
    """Aborts every request still running and stops the loop thread."""
    with self._lock:
      self._stopping = True
    self._commands.put(("stop", None))
    if self._thread.is_alive():
      self._thread.join(timeout)

  # --- loop thread -----------------------------------------------------------

  def _run(self) -> None:
    try:
      stop = False
      while not stop:
        busy = self._engine.has_unfinished_requests()
        stop = self._apply(self._drain(block=not busy))
        if not stop and self._engine.has_unfinished_requests():
          self._step()
      self._shutdown_requests()
    except Exception:  # NOTE: never leave handlers waiting on a dead loop.
      log.exception("engine loop crashed; refusing all requests from now on")
      with self._lock:
        self._stopping = True
      self._fail_all(RejectKind.INTERNAL, "engine loop crashed")
      for kind, arg in self._drain(block=False):
        if kind == "add":
          arg.outputs.put(Event(reject_kind=RejectKind.INTERNAL,
                                reject_message="engine loop crashed"))

  def _drain(self, block: bool) -> list[tuple[str, Any]]:
    cmds = []
    try:
      if block:
        cmds.append(self._commands.get(timeout=_IDLE_POLL_S))
      while True:
        cmds.append(self._commands.get_nowait())
    except queue.Empty:
      return cmds

  def _apply(self, cmds: list[tuple[str, Any]]) -> bool:
    """Adds and aborts in arrival order; returns True on a stop command."""
    stop = False
    added = 0
    for kind, arg in cmds:
      if kind == "add":
        added += 1
        self._add(arg)
      elif kind == "abort":
        if arg in self._active:
          self._engine.abort(arg)
      else:
        stop = True
    if added:
      self._publish(pending_done=added)
    return stop

  def _add(self, sub: Submission) -> None:
    try:
      self._engine.add_request(
          sub.request_id, sampling_params=sub.sampling_params,
          prompt_token_ids=sub.prompt_token_ids, cache_salt=sub.cache_salt,
          priority=sub.priority)
    except ValueError as e:
      self._metrics.rejected.labels(code="invalid_argument").inc()
      sub.outputs.put(Event(reject_kind=RejectKind.INVALID_ARGUMENT, reject_message=str(e)))
      return
    except Exception as e:  # NOTE: a bad request must never kill the loop.
      log.exception("add_request failed for %s", sub.request_id)
      self._metrics.rejected.labels(code="internal").inc()
      sub.outputs.put(Event(reject_kind=RejectKind.INTERNAL, reject_message=f"engine error: {e}"))
      return
    self._active[sub.request_id] = _Track(sub)

  def _step(self) -> None:
    try:
      deltas = self._engine.step()
    except Exception as e:
      log.exception("engine.step() failed; failing %d requests", len(self._active))
      self._fail_all(RejectKind.INTERNAL, f"engine error: {e}")
      return
    self._route(deltas, time.monotonic())
    self._publish(pending_done=0)

  def _route(self, deltas: list[TokenDelta], now: float) -> None:
    for d in deltas:
      track = self._active.get(d.request_id)
      if track is None:
        continue
      if d.token_ids:
        if track.first_token_at is None:
          track.first_token_at = now
          self._metrics.ttft.observe(now - track.sub.received_at)
        else:
          gap = (now - track.last_token_at) / len(d.token_ids)
          for _ in d.token_ids:
            self._metrics.itl.observe(gap)
        track.last_token_at = now
      ttft = None if track.first_token_at is None else track.first_token_at - track.sub.received_at
      if d.finished:
        del self._active[d.request_id]
        self._metrics.e2e.observe(now - track.sub.received_at)
        reason = d.finish_reason.value if d.finish_reason is not None else "unknown"
        self._metrics.finished.labels(finish_reason=reason).inc()
      track.sub.outputs.put(Event(delta=d, ttft_s=ttft))

  def _publish(self, pending_done: int) -> None:
    stats = self._engine.stats()
    with self._lock:
      self._pending -= pending_done
      self._engine_waiting = stats.num_waiting
    self._metrics.observe_stats(stats)

  def _fail_all(self, kind: RejectKind, message: str) -> None:
    """Ends every active request with a rejection and drops it from the engine."""
    for rid, track in list(self._active.items()):
      try:
        self._engine.abort(rid)
      except Exception:  # best effort: the engine may be broken
        log.exception("abort(%s) failed", rid)
      track.sub.outputs.put(Event(reject_kind=kind, reject_message=message))
    self._active.clear()
    try:  # let the aborts take effect so blocks are freed
      if self._engine.has_unfinished_requests():
        self._engine.step()
      self._publish(pending_done=0)
    except Exception:
      log.exception("engine.step() failed while clearing requests")

  def _shutdown_requests(self) -> None:
    """On stop: abort what is left, flush final deltas, reject late adds."""
    for rid in list(self._active):
      try:
        self._engine.abort(rid)
      except Exception:
        log.exception("abort(%s) failed", rid)
    for _ in range(_STOP_MAX_STEPS):
      if not self._engine.has_unfinished_requests():
        break
      self._step()
    self._fail_all(RejectKind.UNAVAILABLE, "server shut down before the request finished")
    for kind, arg in self._drain(block=False):
      if kind == "add":
        arg.outputs.put(Event(reject_kind=RejectKind.UNAVAILABLE,
                              reject_message="server is shutting down"))
