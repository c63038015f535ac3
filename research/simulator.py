"""The simulator: the engine's own loop (`EngineCore`) over a cost-model runner.

`SimulatedEngine` is `LLMEngine` without the model: the same `EngineCore`
(abort, schedule, reject, dispatch step N, land step N-1; admission,
preemption, block allocation, multi-step decode, the length rules) over a
`CostModelRunner`, which "computes" a step by handing back a deterministic
dummy token per decode iteration of each sampling row and predicts its
duration with a `CostModel`. So an 80 GB GPU serving an 8B model with
thousands of requests replays in seconds.
"""
from __future__ import annotations

import dataclasses
import zlib

from engine import context_limit
from engine.config import EngineConfig
from engine.core import CoreOutput, EngineCore, SchedulerFactory
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, ScheduleOutput
from research.cost_model import CostModel, ModelShape, step_features
from research.recording import RecordingScheduler
from research.replay import StepResult
from research.workload import TraceRequest


def dummy_token(request_id: str, position: int, vocab_size: int) -> int:
  """A deterministic stand-in for a sampled token (distinct per request and position)."""
  return 1 + (zlib.crc32(request_id.encode()) + 7919 * position) % (vocab_size - 1)


@dataclasses.dataclass
class SimulatedStep:
  """A step the cost-model runner "ran": its tokens, cost-model features and seconds."""
  tokens: dict[str, list[tuple[int, float]]]
  features: dict[str, float]
  seconds: float | None

  def result(self) -> dict[str, list[tuple[int, float]]]:
    return self.tokens


class CostModelRunner:
  """The simulator's `engine.core.Runner`: no device, dummy tokens, modelled time."""

  def __init__(self, block_size: int, vocab_size: int, cost_model: CostModel | None = None):
    self.block_size = block_size
    self.vocab_size = vocab_size
    self.cost_model = cost_model
    self.num_steps = 0
    self.last_step: SimulatedStep | None = None

  def execute(self, out: ScheduleOutput) -> SimulatedStep:
    tokens = {}
    for s in out.decodes + out.prefills:
      if s.samples:
        # NOTE: the row's sampled tokens are those at positions end - num_sampled + 1 .. end.
        end = s.start + s.num_new_tokens
        rid = s.request.request_id
        tokens[rid] = [(dummy_token(rid, p, self.vocab_size), 0.0)
                       for p in range(end - s.num_sampled + 1, end + 1)]
    features = step_features(out, self.block_size)
    seconds = self.cost_model.predict(features) if self.cost_model is not None else None
    self.num_steps += 1
    self.last_step = SimulatedStep(tokens, features, seconds)
    return self.last_step

  def release(self, request_id: str) -> None:
    del request_id                   # NOTE: no device state to free


class SimulatedEngine:
  """Host-only engine: `EngineCore` over a `CostModelRunner`, no model."""

  def __init__(self, config: EngineConfig, shape: ModelShape, num_blocks: int,
               vocab_size: int = 32000, cost_model: CostModel | None = None,
               scheduler_factory: SchedulerFactory = Scheduler):
    if config.num_blocks is not None and config.num_blocks != num_blocks:
      raise ValueError("config.num_blocks and num_blocks disagree")
    if config.speculative is not None:
      # NOTE: dummy tokens make acceptance meaningless, and the cost model has no verify step.
      raise ValueError("the simulator cannot verify speculative drafts: run it with "
                       "speculative=None (no --speculative-method)")
    self.config = config
    self.shape = shape
    self.vocab_size = vocab_size
    limit = context_limit.resolve(config.max_model_len, shape.max_position_embeddings,
                                  num_blocks, config.block_size, f"--num-blocks {num_blocks}",
                                  allow_small_kv_cache=config.allow_small_kv_cache)
    self.runner = CostModelRunner(config.block_size, vocab_size, cost_model)
    self.core = EngineCore(config, num_blocks, limit, self.runner,
                           scheduler_factory=scheduler_factory)
    self.context_limit = limit
    self.max_model_len = limit.tokens
    self.kv = self.core.kv
    self.scheduler = self.core.scheduler

  def add_request(self, request_id: str, prompt_token_ids: list[int],
                  sampling_params: SamplingParams | None = None, cache_salt: str | None = None,
                  priority: int = 0) -> None:
    self.core.add_request(request_id, prompt_token_ids, sampling_params,
                          cache_salt=cache_salt, priority=priority)

  def abort(self, request_id: str) -> None:
    self.core.abort(request_id)

  def has_unfinished_requests(self) -> bool:
    return self.core.has_unfinished_requests()

  def step(self) -> list[CoreOutput]:
    return self.core.step()


def event_of(request_id: str, num_tokens: int, reason) -> tuple[str, int, bool, str | None]:
  """A replay event: (request_id, new tokens, finished, finish reason)."""
  return request_id, num_tokens, reason is not None, reason.value if reason is not None else None


class SimBackend:
  """`replay.Backend` over a SimulatedEngine with a recording scheduler; step time from
  the cost model."""

  def __init__(self, config: EngineConfig, shape: ModelShape, num_blocks: int,
               vocab_size: int = 32000, cost_model: CostModel | None = None,
               scheduler_factory: SchedulerFactory = RecordingScheduler):
    self.engine = SimulatedEngine(config, shape, num_blocks, vocab_size, cost_model,
                                  scheduler_factory)
    self.scheduler = self.engine.scheduler
    self.vocab_size = vocab_size

  def add(self, request: TraceRequest, prompt_token_ids: list[int]) -> None:
    self.engine.add_request(request.request_id, prompt_token_ids, request.sampling_params(),
                            request.cache_salt)

  def abort(self, request_id: str) -> None:
    self.engine.abort(request_id)

  def has_unfinished(self) -> bool:
    return self.engine.has_unfinished_requests()

  def step(self) -> StepResult:
    runner = self.engine.runner
    before = runner.num_steps
    events = [event_of(o.request.request_id, len(o.token_ids), o.finish_reason)
              for o in self.engine.step()]
    if runner.num_steps == before:
      return StepResult(events, False, None, None)
    return StepResult(events, True, runner.last_step.seconds, runner.last_step.features)
