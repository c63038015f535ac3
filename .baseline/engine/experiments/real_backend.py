"""`replay.Backend` over a real `LLMEngine`: the model runs, steps are timed.

The engine's scheduler is swapped for a `RecordingScheduler` (same config,
same KV manager) before any request arrives; nothing else of the engine
changes. Requests sample greedily with `ignore_eos`, so every request
produces exactly its trace's `max_tokens`.
"""
from __future__ import annotations

import time

from engine.experiments.cost_model import step_features
from engine.experiments.recording import RecordingScheduler
from engine.experiments.replay import StepResult
from engine.experiments.workload import TraceRequest


class RealBackend:
  """Drives `engine` (an LLMEngine with no requests yet) for a replay."""

  def __init__(self, engine):
    if engine.has_unfinished_requests():
      raise ValueError("the engine already has requests")
    old = engine.scheduler
    engine.scheduler = RecordingScheduler(old.config, engine.kv)
    self.engine = engine
    self.scheduler = engine.scheduler
    self.vocab_size = engine.model.config.vocab_size
    self.num_compile_steps = 0
    self._in_flight_features: dict[str, float] | None = None

  def add(self, request: TraceRequest, prompt_token_ids: list[int]) -> None:
    self.engine.add_request(request.request_id, sampling_params=request.sampling_params(),
                            prompt_token_ids=prompt_token_ids, cache_salt=request.cache_salt)

  def abort(self, request_id: str) -> None:
    self.engine.abort(request_id)

  def has_unfinished(self) -> bool:
    return self.engine.has_unfinished_requests()

  def step(self) -> StepResult:
    before = len(self.scheduler.snapshots)
    compiled_before = self.engine.runner.num_compilations
    t0 = time.perf_counter()
    deltas = self.engine.step()
    seconds = time.perf_counter() - t0
    events = [(d.request_id, len(d.token_ids), d.finished,
               d.finish_reason.value if d.finish_reason is not None else None) for d in deltas]
    out = self.scheduler.scheduled_since(before)
    if out is None:
      return StepResult(events, False, None, None)
    # NOTE: one step is always in flight: this call dispatched step N and then waited
    # for step N-1, so its wall time measures N-1's device work: the fit pairs it
    # with N-1's features (the first step has none to pair).
    measured, self._in_flight_features = (self._in_flight_features,
                                          step_features(out, self.engine.kv.block_size))
    if self.engine.runner.num_compilations != compiled_before:
      self.num_compile_steps += 1
      seconds = None                 # NOTE: compile time is not a step cost
    return StepResult(events, True, seconds, measured)
