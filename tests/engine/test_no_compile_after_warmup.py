"""After `warmup=True` a seeded random workload within the configured limits compiles
nothing: every step shape it meets is one of `planned_shapes()`.

NOTE: the tiny Llama's shapes with SmolLM2's vocabulary and tokenizer (random weights),
so that stop strings are detokenized for real and each compile takes well under a second.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest

from engine import EngineConfig, FinishReason, LLMEngine, SamplingParams
from models.config import ModelConfig
from models.loader import LoadedModel
from models.weights.random_init import random_params

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")
# NOTE: 9 usable blocks of 16 tokens for up to 4 requests of up to 96 tokens: preemption.
LIMITS = dict(max_num_seqs=4, max_model_len=96, max_batch_tokens=16, block_size=16,
              num_blocks=10, num_decode_steps=2, enable_prefix_caching=True)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def model(smollm2_model) -> LoadedModel:
  tok = smollm2_model.tokenizer
  config = dataclasses.replace(ModelConfig.from_json(TINY), vocab_size=tok.vocab_size,
                               eos_token_ids=smollm2_model.config.eos_token_ids, bos_token_id=7)
  return LoadedModel(config, random_params(config), tok, "tiny+smollm2-tokenizer")


def _params(rng, i: int) -> SamplingParams:
  kind = ("greedy", "random", "filtered")[i % 3]
  extra = dict(max_tokens=int(rng.integers(1, MAX_TOKENS + 1)), ignore_eos=bool(rng.random() < .5),
               stop=("e",) if rng.random() < .3 else (), logprobs=bool(rng.random() < .3))
  if kind == "greedy":
    return SamplingParams(temperature=0.0, **extra)
  if kind == "random":
    return SamplingParams(temperature=0.9, seed=i, **extra)
  return SamplingParams(temperature=1.1, top_k=int(rng.integers(1, 50)), top_p=0.9, min_p=0.05,
                        **extra)


def _prompt(rng, shared: list[int], vocab: int) -> list[int]:
  n = int(rng.integers(1, LIMITS["max_model_len"] - MAX_TOKENS + 1))
  ids = rng.integers(3, vocab, n).tolist()
  if n > len(shared) and rng.random() < .4:     # a prefix hit: 2 full blocks shared
    ids[:len(shared)] = shared
  return ids


def run_workload(engine: LLMEngine, seed: int, num_requests: int = 40) -> dict:
  rng = np.random.default_rng(seed)
  vocab = engine.model.config.vocab_size
  shared = rng.integers(3, vocab, 32).tolist()
  finished, added = {}, 0
  while added < num_requests or engine.has_unfinished_requests():
    if added < num_requests and rng.random() < .3:       # a burst of 1..max_num_seqs
      for _ in range(int(rng.integers(1, LIMITS["max_num_seqs"] + 1))):
        engine.add_request(str(added), prompt_token_ids=_prompt(rng, shared, vocab),
                           sampling_params=_params(rng, added))
        added += 1
    for d in engine.step():
      if d.finished:
        finished[d.request_id] = d
  return finished


def test_a_random_workload_after_warmup_compiles_nothing(model, caplog):
  engine = LLMEngine(EngineConfig(**LIMITS, warmup=True), model=model)
  runner = engine.runner
  assert runner.warm and len(runner._executables) == len(runner.planned_shapes()) == 7
  before = engine.stats()
  with caplog.at_level(logging.WARNING):
    finished = run_workload(engine, seed=0)
  stats = engine.stats()
  assert stats.num_compilations == before.num_compilations
  assert stats.compile_seconds == before.compile_seconds
  assert len(runner._executables) == 7
  assert not [r for r in caplog.records if "AFTER warm-up" in r.getMessage()]
  # The workload did reach what it was meant to exercise.
  assert len(finished) == 40 and all(d.error is None for d in finished.values())
  assert stats.num_preemptions_total > 0
  assert stats.prefix_hit_tokens_total > 0
  reasons = {d.finish_reason for d in finished.values()}
  assert reasons == {FinishReason.STOP, FinishReason.LENGTH}


def test_speculation_after_warmup_compiles_nothing(model, caplog):
  """The same workload with n-gram speculation (no multi-step decode): verify steps of
  every row bucket, drafts cut by budget, blocks and limits, rejected drafts rolled back."""
  config = EngineConfig(**dict(LIMITS, num_decode_steps=1), warmup=True, speculative="ngram",
                        num_speculative_tokens=3)
  engine = LLMEngine(config, model=model)
  runner = engine.runner
  kinds = [s.kind for s in runner.planned_shapes()]
  assert kinds.count("verify") == kinds.count("decode") == 3 and len(runner._executables) == 7
  before = engine.stats()
  with caplog.at_level(logging.WARNING):
    finished = run_workload(engine, seed=0)
  stats = engine.stats()
  assert stats.num_compilations == before.num_compilations and len(runner._executables) == 7
  assert not [r for r in caplog.records if "AFTER warm-up" in r.getMessage()]
  assert len(finished) == 40 and all(d.error is None for d in finished.values())
  assert stats.num_preemptions_total > 0 and stats.prefix_hit_tokens_total > 0
  assert stats.spec_accepted_tokens_total > 0
  assert stats.spec_proposed_tokens_total > stats.spec_accepted_tokens_total
  assert engine.kv.num_used_blocks == 0


def test_a_shape_outside_the_plan_compiles_with_a_warning(model, caplog):
  """The warning path itself: a decode of more iterations than planned is not a shape
  the engine can schedule, so it compiles, and says so."""
  engine = LLMEngine(EngineConfig(**LIMITS, warmup=True), model=model)
  runner, compiled = engine.runner, engine.runner.num_compilations
  from engine import step_inputs
  x = step_inputs.empty_decode(1, runner.buckets.table_widths[0], runner.trash_slot)
  with caplog.at_level(logging.WARNING):
    runner._run_decode(x, steps=LIMITS["num_decode_steps"] + 1)
  assert runner.num_compilations == compiled + 1
  assert engine.stats().compile_seconds > 0
  warned = [r.getMessage() for r in caplog.records if "AFTER warm-up" in r.getMessage()]
  assert len(warned) == 1 and "decode step" in warned[0] and "3 iterations" in warned[0]
