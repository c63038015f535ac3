"""The simulator: the engine's own Scheduler and KV managers, a cost model instead of the model.

`SimulatedEngine` mirrors `LLMEngine.step()` on the host, including its one
step in flight: abort, schedule, reject, update (step N is "dispatched"), then
land step N-1's tokens: one dummy token per sampling row, stopping at
max_tokens (or the context length). Scheduling, admission,
preemption and block allocation are the engine's code, unchanged; only the
step's duration comes from a `CostModel`. So an 80 GB GPU serving an 8B model
with thousands of requests replays in seconds.
"""
from __future__ import annotations

import zlib

from engine.config import EngineConfig
from engine.experiments.cost_model import CostModel, ModelShape, step_features
from engine.experiments.recording import RecordingScheduler
from engine.experiments.replay import StepResult
from engine.experiments.workload import TraceRequest
from engine.memory import build_kv_manager
from engine.output_processor import accepted
from engine.outputs import FinishReason
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import SchedulerConfig


def max_model_len_of(config: EngineConfig, max_position_embeddings: int) -> int:
  """The engine's context limit for a model (same rule as `LLMEngine`)."""
  return min(config.max_model_len or min(max_position_embeddings, 4096), max_position_embeddings)


def scheduler_config_of(config: EngineConfig, max_model_len: int) -> SchedulerConfig:
  """The SchedulerConfig `LLMEngine` builds from an EngineConfig.

  NOTE: tests assert it equals a real engine's `scheduler.config`, so the two
  cannot drift apart silently.
  """
  step_tokens = (config.max_batch_tokens if config.enable_chunked_prefill
                 else max(config.max_batch_tokens, max_model_len))
  return SchedulerConfig(max_model_len=max_model_len, max_num_seqs=config.max_num_seqs,
                         max_batch_tokens=step_tokens,
                         enable_chunked_prefill=config.enable_chunked_prefill,
                         watermark=config.watermark)


def dummy_token(request_id: str, position: int, vocab_size: int) -> int:
  """A deterministic stand-in for a sampled token (distinct per request and position)."""
  return 1 + (zlib.crc32(request_id.encode()) + 7919 * position) % (vocab_size - 1)


class SimulatedEngine:
  """Host-only engine: the real scheduler and KV manager, no device work."""

  def __init__(self, config: EngineConfig, shape: ModelShape, num_blocks: int,
               vocab_size: int = 32000):
    if config.num_blocks is not None and config.num_blocks != num_blocks:
      raise ValueError("config.num_blocks and num_blocks disagree")
    self.config = config
    self.shape = shape
    self.vocab_size = vocab_size
    self.max_model_len = max_model_len_of(config, shape.max_position_embeddings)
    self.kv = build_kv_manager(config, num_blocks)
    self.scheduler = RecordingScheduler(scheduler_config_of(config, self.max_model_len), self.kv)
    self._requests: dict[str, Request] = {}
    self._aborts: list[str] = []
    self._in_flight = None           # the ScheduleOutput whose tokens have not landed

  def add_request(self, request_id: str, prompt_token_ids: list[int],
                  sampling_params: SamplingParams, cache_salt: str | None = None) -> None:
    if request_id in self._requests:
      raise ValueError(f"request id {request_id!r} is already in use")
    if len(prompt_token_ids) + 1 > self.max_model_len:
      raise ValueError(f"prompt has {len(prompt_token_ids)} tokens; with one generated token "
                       f"that exceeds the context of {self.max_model_len} tokens")
    request = Request(request_id, list(prompt_token_ids), sampling_params,
                      cache_salt=cache_salt)
    self._requests[request_id] = request
    self.scheduler.add(request)

  def abort(self, request_id: str) -> None:
    if request_id in self._requests:
      self._aborts.append(request_id)

  def has_unfinished_requests(self) -> bool:
    return bool(self._requests) or self._in_flight is not None

  def step(self) -> list[tuple[str, int, bool, str | None]]:
    """One step, in `LLMEngine.step()`'s order: schedule and "dispatch" step N, then
    land step N-1's tokens. Events are (request_id, new tokens, finished, reason)."""
    events = [self._finish(self._requests[rid], FinishReason.ABORT, 0)
              for rid in dict.fromkeys(self._aborts) if rid in self._requests]
    self._aborts.clear()
    out = self.scheduler.schedule()
    events += [self._finish(r, FinishReason.ERROR, 0) for r in out.rejected]
    previous, self._in_flight = self._in_flight, None
    if not out.is_empty:
      self._in_flight = out
      self.scheduler.update(out)
    if previous is not None:
      events += self._land(previous)
    return events

  def _land(self, out) -> list[tuple[str, int, bool, str | None]]:
    """The previous step's sampled tokens arrive: append a dummy token per sampling row."""
    events = []
    for s in out.decodes + out.prefills:
      request = s.request
      if not s.samples or request.is_finished:
        continue
      token = dummy_token(request.request_id, request.num_tokens, self.vocab_size)
      request.num_pending_tokens -= 1
      _, reason = accepted(request, [token], self.max_model_len)
      request.output_token_ids.append(token)
      self.kv.cache_full_blocks(request)
      events.append(self._finish(request, reason, 1) if reason is not None
                    else (request.request_id, 1, False, None))
    return events

  def _finish(self, request: Request, reason: FinishReason, num_tokens: int):
    self.scheduler.finish(request, reason)
    del self._requests[request.request_id]
    return (request.request_id, num_tokens, True, reason.value)


class SimBackend:
  """`replay.Backend` over a SimulatedEngine; step time from the cost model."""

  def __init__(self, engine: SimulatedEngine, cost_model: CostModel | None):
    self.engine = engine
    self.cost_model = cost_model
    self.scheduler = engine.scheduler
    self.vocab_size = engine.vocab_size

  def add(self, request: TraceRequest, prompt_token_ids: list[int]) -> None:
    self.engine.add_request(request.request_id, prompt_token_ids, request.sampling_params(),
                            request.cache_salt)

  def abort(self, request_id: str) -> None:
    self.engine.abort(request_id)

  def has_unfinished(self) -> bool:
    return self.engine.has_unfinished_requests()

  def step(self) -> StepResult:
    before = len(self.scheduler.snapshots)
    events = self.engine.step()
    out = self.scheduler.scheduled_since(before)
    if out is None:
      return StepResult(events, False, None, None)
    features = step_features(out, self.engine.kv.block_size)
    seconds = self.cost_model.predict(features) if self.cost_model is not None else None
    return StepResult(events, True, seconds, features)
