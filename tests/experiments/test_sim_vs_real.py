"""The simulator and the real engine make identical scheduling decisions on one trace.

Only time is modelled: on the "steps" clock both see the same arrivals at the
same step, so admissions, preemptions, rejections, per-step block counts and
slot usage must match exactly.
"""
from __future__ import annotations

import pytest

from engine import LLMEngine
from engine.experiments import metrics
from engine.experiments import workload as w
from engine.experiments.real_backend import RealBackend
from engine.experiments.replay import ReplayOptions, replay
from engine.experiments.simulator import SimBackend, SimulatedEngine, scheduler_config_of
from models import load_model
from tests.experiments.helpers import TINY_CONFIG, TINY_SHAPE, engine_config

TRACE = w.generate(w.WorkloadConfig(num_requests=10, rate=6.0, scale=0.1, num_tenants=2,
                                    seed=11))
OPTIONS = ReplayOptions(clock="steps", step_dt=0.05, queue_timeout_s=1.5)


@pytest.fixture(scope="module")
def tiny_model():
  return load_model("random:" + TINY_CONFIG, dtype="float32")


@pytest.mark.parametrize("allocator, prefix, num_blocks", [
    ("paged", True, 26),          # tight: preemptions and prefix hits
    ("contiguous", False, 40),    # fragmentation: timeouts
])
def test_simulator_matches_real_engine_exactly(tiny_model, allocator, prefix, num_blocks):
  config = engine_config(allocator, prefix, num_blocks, max_model_len=512,
                         max_batch_tokens=64, max_num_seqs=8)
  real_engine = LLMEngine(config, model=tiny_model)
  real = replay(RealBackend(real_engine), TRACE, OPTIONS)
  sim_engine = SimulatedEngine(config, TINY_SHAPE, num_blocks, vocab_size=512)
  sim = replay(SimBackend(sim_engine, None), TRACE, OPTIONS)
  assert real_engine.scheduler.config == scheduler_config_of(config, 512)
  assert sim.scheduler.snapshots == real.scheduler.snapshots   # every step's blocks and slots
  r, s = metrics.summarize(real), metrics.summarize(sim)
  assert r == s
  for rid, log in real.requests.items():
    assert (log.finish_reason, len(log.token_times)) == (
        sim.requests[rid].finish_reason, len(sim.requests[rid].token_times))
  # The trace exercises what it is meant to: preemption + reuse, or fragmentation.
  if allocator == "paged":
    assert r["preemptions"] > 0 and r["prompt_tokens_from_cache"] > 0
  else:
    assert r["fragmentation_blocked_steps"] > 0


def test_real_backend_pairs_each_wall_time_with_the_step_it_waited_for(tiny_model):
  """One step is always in flight: engine.step() dispatches step N, then waits for N-1,
  so the wall time of call N is attributed to step N-1's features (for the cost-model fit)."""
  from engine.experiments.cost_model import step_features
  config = engine_config("paged", False, 40, max_model_len=512, max_batch_tokens=64,
                         max_num_seqs=8)
  backend = RealBackend(LLMEngine(config, model=tiny_model))
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
