"""One replay loop for a trace, over either the real engine or the simulator.

Arrivals are replayed against the run's own clock: before each step every
request whose arrival time has passed is added. The clock advances per step
by a fixed `step_dt` ("steps": deterministic, so two backends see the same
arrivals at the same step) or by the step's duration ("measured": wall time
for the real engine, the cost model for the simulator).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Protocol, Sequence

from engine.experiments.recording import RecordingScheduler
from engine.experiments.workload import TraceRequest

CLOCKS = ("steps", "measured")


@dataclasses.dataclass(frozen=True)
class ReplayOptions:
  clock: str = "steps"
  step_dt: float = 0.05                 # seconds per step on the "steps" clock
  queue_timeout_s: float | None = None  # never-started requests waiting longer fail (gateway OOM)
  max_steps: int = 2_000_000

  def __post_init__(self):
    if self.clock not in CLOCKS:
      raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
    if not self.step_dt > 0:
      raise ValueError(f"step_dt must be > 0, got {self.step_dt}")
    if self.queue_timeout_s is not None and self.queue_timeout_s <= 0:
      raise ValueError("queue_timeout_s must be > 0 (or None)")


@dataclasses.dataclass
class StepResult:
  """What one backend step did: (request_id, new tokens, finished, finish reason) events."""
  events: list[tuple[str, int, bool, str | None]]
  ran: bool                              # something was computed
  seconds: float | None                  # measured/modelled duration; None: not measurable
  features: dict[str, float] | None      # cost-model features of the work `seconds` measures
                                         # (the real engine: the previous step, in flight)


class Backend(Protocol):
  scheduler: RecordingScheduler
  vocab_size: int

  def add(self, request: TraceRequest, prompt_token_ids: list[int]) -> None: ...
  def abort(self, request_id: str) -> None: ...
  def step(self) -> StepResult: ...
  def has_unfinished(self) -> bool: ...


@dataclasses.dataclass
class RequestLog:
  """Timeline of one request on the run's clock."""
  trace: TraceRequest
  token_times: list[float] = dataclasses.field(default_factory=list)
  finish_time: float | None = None
  finish_reason: str | None = None
  failed_for_memory: bool = False


@dataclasses.dataclass
class RunLog:
  """Raw record of one replay: per-request timelines and per-step durations."""
  requests: dict[str, RequestLog]
  step_seconds: list[float]              # clock advance of each step that ran
  timed_steps: list[tuple[dict[str, float], float]]   # (features, measured s) of timed steps
  makespan: float
  scheduler: RecordingScheduler


def replay(backend: Backend, trace: Sequence[TraceRequest], options: ReplayOptions) -> RunLog:
  """Runs every request of `trace` to completion and returns the raw record."""
  pending = collections.deque(sorted(trace, key=lambda r: r.arrival_time))
  logs = {r.request_id: RequestLog(r) for r in trace}
  if len(logs) != len(trace):
    raise ValueError("trace has duplicate request ids")
  clock, steps, idle, timed, durations = 0.0, 0, 0, [], []
  while pending or backend.has_unfinished():
    while pending and pending[0].arrival_time <= clock:
      r = pending.popleft()
      backend.add(r, r.prompt_token_ids(backend.vocab_size))
    if not backend.has_unfinished():
      clock = pending[0].arrival_time
      continue
    _expire(backend, logs, clock, options)
    result = backend.step()
    steps += 1
    if steps > options.max_steps:
      raise RuntimeError(f"replay did not finish in {options.max_steps} steps")
    dt = _advance(result, durations, options)
    if result.ran:
      durations.append(dt)
      if result.seconds is not None and result.features is not None:
        timed.append((result.features, result.seconds))
      idle = 0
    else:
      idle += 1
      if idle > 3 and not pending:
        raise RuntimeError("replay stalled: requests wait but nothing can be scheduled")
    clock += dt
    _record(result, logs, clock)
    if not result.ran and pending:
      clock = max(clock, pending[0].arrival_time)   # idle: jump to the next arrival
  return RunLog(logs, durations, timed, clock, backend.scheduler)


def _advance(result: StepResult, durations: list[float], options: ReplayOptions) -> float:
  if not result.ran:
    return 0.0
  if options.clock == "steps":
    return options.step_dt
  if result.seconds is not None:
    return result.seconds
  # NOTE: a step that compiled is not a serving cost: it counts as the median step so far.
  ordered = sorted(durations)
  return ordered[len(ordered) // 2] if ordered else 0.0


def _expire(backend: Backend, logs: dict[str, RequestLog], clock: float,
            options: ReplayOptions) -> None:
  """Aborts requests that never started within the queue timeout (a gateway's OOM error)."""
  if options.queue_timeout_s is None:
    return
  for request in list(backend.scheduler.waiting):
    log = logs[request.request_id]
    if (not request.output_token_ids and request.num_preemptions == 0
        and not log.failed_for_memory
        and clock - log.trace.arrival_time > options.queue_timeout_s):
      log.failed_for_memory = True
      backend.abort(request.request_id)


def _record(result: StepResult, logs: dict[str, RequestLog], clock: float) -> None:
  for request_id, num_tokens, finished, reason in result.events:
    log = logs[request_id]
    log.token_times.extend([clock] * num_tokens)
    if finished:
      log.finish_time = clock
      log.finish_reason = reason
