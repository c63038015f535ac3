"""Warm-up on the tiny random Llama: every bucket compiled ahead of time on a thread pool,
executables shared between engines of the same shapes, the KV cache still donated."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from engine import LLM, SamplingParams, executables
from models import load_model

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")
# 2 decode + 1 prefill bucket shapes: 3 compilations per warm-up (any sampler variant).
SHAPES = dict(max_num_seqs=2, max_batch_tokens=16, max_model_len=64, num_blocks=64)


@pytest.fixture(scope="module")
def tiny():
  return load_model(f"random:{TINY}")


def own_steps(model, tag: int):
  """`model` under a config of its own, so that it gets its own memoized steps and shared
  executables whatever else ran in this process (compile counts are exact).

  NOTE: only bos_token_id differs, which no step reads: the tokens stay the same.
  """
  return dataclasses.replace(model, config=dataclasses.replace(model.config, bos_token_id=tag))


def expected_compilations(runner) -> int:
  return len(runner.planned_shapes())


def warmed(model, threads: int, block_size: int = 16, **kw) -> LLM:
  llm = LLM(loaded_model=model, block_size=block_size, **dict(SHAPES, **kw))
  llm.engine.runner.warmup(threads=threads)
  return llm


def greedy_tokens(llm, seed: int) -> list[list[int]]:
  prompts = [np.random.default_rng(seed).integers(3, 500, n).tolist() for n in (5, 21, 12)]
  params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
  return [o.token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params,
                                            use_tqdm=False)]


@pytest.fixture(scope="module")
def warm(tiny):
  return warmed(own_steps(tiny, 101), threads=2)


def test_warmup_compiles_every_bucket_and_serving_never_compiles(warm):
  runner = warm.engine.runner
  assert runner.num_compilations == expected_compilations(runner) == 3
  assert warm.engine.stats().num_compilations == 3
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 100, n).tolist() for n in (3, 17, 40, 9)]
  for sp in (SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
             SamplingParams(temperature=0.8, max_tokens=5, ignore_eos=True),
             SamplingParams(temperature=0.8, top_p=0.9, max_tokens=5, ignore_eos=True)):
    warm.generate(prompt_token_ids=prompts, use_tqdm=False, sampling_params=sp)
  assert runner.num_compilations == 3


def test_parallel_and_serial_warmup_give_the_same_tokens(warm, tiny):
  # NOTE: one block more than `warm`, so that none of its executables has the HLO of one
  # of `warm`'s (which the on-disk compilation cache of scripts/test.sh would just load).
  serial = warmed(own_steps(tiny, 102), threads=1, num_blocks=SHAPES["num_blocks"] + 1)
  assert serial.engine.runner.num_compilations == 3
  tokens = greedy_tokens(serial, seed=1)
  assert tokens == greedy_tokens(warm, seed=1)
  assert [len(t) for t in tokens] == [8, 8, 8]
  assert serial.engine.runner.num_compilations == 3


def test_engine_with_the_same_shapes_reuses_the_executables(warm, tiny):
  same = warmed(own_steps(tiny, 101), threads=2)
  assert same.engine.runner.num_compilations == 0
  ours, theirs = same.engine.runner._executables, warm.engine.runner._executables
  assert ours.keys() == theirs.keys() and all(ours[k] is theirs[k] for k in ours)
  assert greedy_tokens(same, seed=2) == greedy_tokens(warm, seed=2)
  assert same.engine.runner.num_compilations == 0


def test_engine_with_another_block_size_compiles_its_own(warm, tiny):
  other = LLM(loaded_model=own_steps(tiny, 101), block_size=8, **SHAPES)   # no warm-up
  assert [len(t) for t in greedy_tokens(other, seed=3)] == [8, 8, 8]
  runner = other.engine.runner
  assert runner.num_compilations == len(runner._executables) > 0     # every one its own
  assert not set(map(id, runner._executables.values())) & set(
      map(id, warm.engine.runner._executables.values()))


def test_steps_donate_the_kv_cache_and_token_buffer(warm):
  runner = warm.engine.runner
  cache, buffer = runner.kv_cache, runner.token_buffer
  warm.generate(prompt_token_ids=[[5, 6, 7]], use_tqdm=False,
                sampling_params=SamplingParams(temperature=0.0, max_tokens=2))
  assert cache.is_deleted() and buffer.is_deleted()
  assert not runner.kv_cache.is_deleted()
  assert not runner.token_buffer.is_deleted()


def test_compiler_threads(monkeypatch):
  # One thread per usable core, capped.
  for cores, want in ((3, 3), (1000, executables.MAX_DEFAULT_THREADS)):
    monkeypatch.setattr(executables.os, "sched_getaffinity", lambda _: set(range(cores)))
    assert executables.default_threads() == want
  with pytest.raises(ValueError, match="threads"):
    executables.compiler(0)
  with executables.compiler(1) as pool:
    assert pool.submit(lambda: 7).result() == 7
    with pytest.raises(ZeroDivisionError):
      pool.submit(lambda: 1 / 0).result()


def test_gpu_steps_keep_their_conditionals_in_the_cuda_graph():
  """The sampler's conds must not send their branch index to the host on a GPU
  (engine/executables.py); elsewhere XLA's defaults stay."""
  for platform in ("gpu", "cuda"):
    kinds = executables.compiler_options(platform)["xla_gpu_enable_command_buffer"].split(",")
    assert {"CONDITIONAL", "WHILE", "FUSION", "CUSTOM_CALL"} <= set(kinds)
  assert executables.compiler_options("cpu") is None
  # Every command type is one this XLA knows (it validates the names on any platform).
  import jax
  jax.jit(lambda x: x + 1).lower(1.0).compile(executables.compiler_options("gpu"))
