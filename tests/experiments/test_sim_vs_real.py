"""The simulator and the real engine make identical scheduling decisions on one trace.

Only time is modelled: on the "steps" clock both see the same arrivals at the
same step, so every ScheduleOutput (decode rows, prefill chunks, preemptions,
admissions with their prefix hits, rejections), per-step block counts and slot
usage must match exactly, with single-step and multi-step decode. The real
tokens differ from the simulator's dummy ones, but with ignore_eos and fixed
max_tokens no decision depends on them.
"""
from __future__ import annotations

import dataclasses

import pytest

from research import metrics
from research import workload as w
from research.real_backend import RealBackend
from research.recording import RecordingScheduler
from research.replay import ReplayOptions, replay
from research.simulator import SimBackend
from models import load_model
from tests.experiments.helpers import TINY_CONFIG, TINY_SHAPE, engine_config

TRACE = w.generate(w.WorkloadConfig(num_requests=10, rate=6.0, scale=0.1, num_tenants=2,
                                    seed=11))
OPTIONS = ReplayOptions(clock="steps", step_dt=0.05, queue_timeout_s=1.5)


@pytest.fixture(scope="module")
def tiny_model():
  return load_model("random:" + TINY_CONFIG, dtype="float32")


class DecisionLog(RecordingScheduler):
  """The recording scheduler plus the decisions of every ScheduleOutput."""

  def __init__(self, config, kv, proposer=None):
    super().__init__(config, kv, proposer)
    self.decisions = []

  def schedule(self):
    out = super().schedule()
    rows = lambda rs: tuple((s.request.request_id, s.start, s.num_new_tokens) for s in rs)
    self.decisions.append((
        rows(out.decodes), rows(out.prefills), tuple(r.request_id for r in out.preempted),
        # NOTE: right after admission num_computed_tokens is the prefix-cache hit.
        tuple((r.request_id, r.num_computed_tokens) for r in out.admitted),
        tuple(r.request_id for r in out.rejected)))
    return out


@pytest.mark.parametrize("allocator, prefix, num_blocks, k", [
    ("paged", True, 26, 1),       # tight: preemptions and prefix hits
    ("paged", True, 26, 4),       # the same with multi-step decode
    ("contiguous", False, 40, 1),  # fragmentation: timeouts
])
def test_simulator_matches_real_engine_exactly(tiny_model, allocator, prefix, num_blocks, k):
  config = dataclasses.replace(engine_config(allocator, prefix, num_blocks, max_model_len=512,
                                             max_batch_tokens=64, max_num_seqs=8),
                               num_decode_steps=k)
  real = replay(RealBackend(config, tiny_model, DecisionLog), TRACE, OPTIONS)
  sim = replay(SimBackend(config, TINY_SHAPE, num_blocks, vocab_size=512,
                          scheduler_factory=DecisionLog), TRACE, OPTIONS)
  assert real.scheduler.config == sim.scheduler.config       # one rule builds both
  assert sim.scheduler.config.num_decode_steps == k
  decisions = real.scheduler.decisions
  assert sim.scheduler.decisions == decisions                 # every ScheduleOutput
  assert sim.scheduler.snapshots == real.scheduler.snapshots   # every step's blocks and slots
  r, s = metrics.summarize(real), metrics.summarize(sim)
  assert r == s
  for rid, log in real.requests.items():
    assert (log.finish_reason, len(log.token_times)) == (
        sim.requests[rid].finish_reason, len(sim.requests[rid].token_times))
  # The trace exercises what it is meant to: preemption + reuse, or fragmentation.
  if allocator == "paged":
    assert r["preemptions"] > 0 and r["prompt_tokens_from_cache"] > 0
    assert any(preempted for _, _, preempted, _, _ in decisions)
    assert any(hit for *_, admitted, _ in decisions for _, hit in admitted)
    multi = [n for decodes, *_ in decisions for _, _, n in decodes if n > 1]
    assert bool(multi) == (k > 1) and max(multi, default=k) == k
  else:
    assert r["fragmentation_blocked_steps"] > 0


def test_real_backend_pairs_each_wall_time_with_the_step_it_waited_for(tiny_model):
  """One step is always in flight: engine.step() dispatches step N, then waits for N-1,
  so the wall time of call N is attributed to step N-1's features (for the cost-model fit)."""
  from research.cost_model import step_features
  config = engine_config("paged", False, 40, max_model_len=512, max_batch_tokens=64,
                         max_num_seqs=8)
  backend = RealBackend(config, tiny_model)
  for r in TRACE[:4]:
    backend.add(r, r.prompt_token_ids(backend.vocab_size))
  timed, dispatched = [], []
  while backend.has_unfinished():
    result = backend.step()
    if result.ran:
      timed.append(result.features)
      dispatched.append(step_features(backend.scheduler.last_output, 16))
  assert len(dispatched) > 5 and timed[0] is None
  assert timed[1:] == dispatched[:-1]
  assert dispatched[0] != dispatched[1]          # the shift is visible: prefill, then decode


def test_research_backends_refuse_speculative_decoding(tiny_model):
  """Dummy tokens make acceptance meaningless and the cost model has no verify step: both
  backends say so instead of ignoring it."""
  config = dataclasses.replace(engine_config("paged", True, 26), speculative="ngram")
  with pytest.raises(ValueError, match="cannot verify speculative drafts"):
    SimBackend(config, TINY_SHAPE, 26, vocab_size=512)
  with pytest.raises(ValueError, match="do not model speculative decoding"):
    RealBackend(config, tiny_model)
