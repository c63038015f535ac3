"""8-bit KV caches in the engine (issue 15): the smaller blocks counted, the (values, scales)
cache donated and updated in place, the Pallas kernels giving the XLA path's result over the
flat cache, and prefix caching, preemption, chunked prefill and multi-step decode unchanged."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import hlo
from engine import LLM, EngineConfig, SamplingParams, kv_layout
from engine.kv_budget import resolve_num_blocks
from pallas_kernels import quantization
from tests.engine.test_layer_scan import BLOCK, compiled, prefill_then_decode, tiny
from tests.parallel.tp_worker import tiny_model, tiny_prompts

NAMES = ("int8", "float8_e4m3")
ENGINE = dict(block_size=8, max_num_seqs=4, max_batch_tokens=32, max_model_len=64)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_config_takes_the_issue_dtypes_and_resolves_auto():
  assert EngineConfig().kv_cache_dtype == "auto" and EngineConfig().cache_dtype == "float32"
  assert EngineConfig(dtype="bfloat16").cache_dtype == "bfloat16"
  for name in ("bfloat16",) + NAMES:
    assert EngineConfig(kv_cache_dtype=name).cache_dtype == name
  for bad in ("float16", "int4", None, "fp8"):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
      EngineConfig(kv_cache_dtype=bad)
  # "mosaic" reads 8-bit caches too (the decode where the device's table measured it
  # faster than Triton; pallas_kernels/decode.py), so neither backend is refused.
  EngineConfig(kv_cache_dtype="int8", attention_backend="mosaic")
  EngineConfig(kv_cache_dtype="int8", attention_backend="triton")


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_budget_holds_the_smaller_blocks(name):
  model = tiny_model()
  budget = 1 << 20
  counts = {}
  for dtype in ("bfloat16", name):
    config = EngineConfig(kv_cache_dtype=dtype, kv_cache_memory_bytes=budget, **ENGINE)
    counts[dtype], sized_by = resolve_num_blocks(config, model.config, model.params)
    per_block = kv_layout.bytes_per_block(model.config, 8, dtype)
    assert counts[dtype] == budget // per_block + 1 and f"{per_block} bytes" in sized_by
  # head_dim 16: 16 bytes + a 4-byte scale per vector vs 32 bytes.
  assert (counts[name] - 1) / (counts["bfloat16"] - 1) == pytest.approx(32 / 20, rel=3e-3)


@pytest.fixture(scope="module")
def int8_engine():
  """The cache (2 layers x 2048 blocks) far outweighs every other buffer of a step."""
  return LLM(loaded_model=tiny(2), num_blocks=2048, kv_cache_dtype="int8", block_size=BLOCK,
             max_num_seqs=4, max_batch_tokens=16, max_model_len=64)


@pytest.mark.parametrize("kind,decode_steps", [("decode", 1), ("decode", 4), ("prefill", 1)])
def test_step_updates_both_cache_arrays_in_place(int8_engine, kind, decode_steps):
  runner = int8_engine.engine.runner
  cache = runner.kv_cache
  assert isinstance(cache, quantization.QuantizedKV)
  assert cache.values.shape == (2 * 2048, 2, 2, BLOCK, 16) and cache.values.dtype == jnp.int8
  assert cache.scales.shape == (2 * 2048, 2, 2, BLOCK) and cache.scales.dtype == jnp.float32
  step = compiled(int8_engine, kind, decode_steps)
  text = step.as_text()
  first = len(jax.tree_util.tree_leaves(runner.model.params))
  aliases = hlo.input_output_aliases(text)
  assert aliases[0] == first and aliases[1] == first + 1         # values, scales donated
  memory = step.memory_analysis()
  assert memory.alias_size_in_bytes >= cache.values.nbytes + cache.scales.nbytes
  assert memory.temp_size_in_bytes < cache.scales.nbytes, memory
  for shape in (f"s8[{','.join(map(str, cache.values.shape))}]",
                f"f32[{','.join(map(str, cache.scales.shape))}]"):
    assert not [line for line in hlo.instructions(text.splitlines(), "copy") if shape in line]


def test_engine_steps_keep_both_buffers_and_write_only_their_blocks(int8_engine):
  runner = int8_engine.engine.runner
  before = [x.unsafe_buffer_pointer() for x in runner.kv_cache]
  outs = int8_engine.generate(prompt_token_ids=[[5, 6, 7, 8, 9] * 5, [3, 1]], use_tqdm=False,
                              sampling_params=dataclasses.replace(GREEDY, max_tokens=6))
  assert [len(o.token_ids) for o in outs] == [6, 6]
  assert [x.unsafe_buffer_pointer() for x in runner.kv_cache] == before
  scales = np.asarray(runner.kv_cache.scales).reshape(2, 2048, -1)
  written = [set(np.flatnonzero(np.any(layer[1:] != 0, axis=1)) + 1) for layer in scales]
  assert written[0] == written[1] and len(written[0]) == 5     # 4 + 1 blocks of 8 tokens


@pytest.mark.parametrize("name", NAMES)
def test_pallas_kernels_match_the_xla_path_over_the_flat_quantized_cache(name):
  """A 3-layer prefill (one sequence after a cached prefix) and a decode step through the
  engine's layered seams on an 8-bit cache: Triton kernels (interpret mode) vs XLA."""
  model = tiny(3, num_heads=8, num_kv_heads=2)
  rng = np.random.default_rng(0)
  cache = quantization.QuantizedKV(*quantization.quantize(
      jnp.asarray(rng.standard_normal((3 * 8, 2, 2, BLOCK, 16)), jnp.float32),
      quantization.storage_dtype(name)))
  results = {backend: [np.asarray(hidden), np.asarray(last),
                        np.asarray(quantization.dequantize(*out))]
             for backend, (hidden, last, out) in prefill_then_decode(model, cache).items()}
  for want, got in zip(results["xla"], results["triton"]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _generate(model, prompts, **kw):
  llm = LLM(loaded_model=model, **dict(ENGINE, **kw))
  outs = llm.generate(prompt_token_ids=prompts, sampling_params=GREEDY, use_tqdm=False)
  return [o.token_ids for o in outs], llm.engine


@pytest.mark.parametrize("name", NAMES)
def test_engine_features_are_unchanged_on_an_8bit_cache(name):
  model, prompts = tiny_model(), tiny_prompts()
  want, _ = _generate(model, prompts, kv_cache_dtype=name, num_blocks=96,
                      enable_prefix_caching=False)
  assert len({t for seq in want for t in seq}) > 10              # not a degenerate output
  got, engine = _generate(model, prompts, kv_cache_dtype=name, num_blocks=96,
                          max_batch_tokens=16, num_decode_steps=4)
  assert got == want                                             # chunked, multi-step
  # A tiny pool: preemption, the request recomputed from its tokens, multi-step too.
  got, engine = _generate(model, prompts, kv_cache_dtype=name, num_blocks=12, watermark=0.0,
                          enable_prefix_caching=False, num_decode_steps=3,
                          allow_small_kv_cache=True)
  assert got == want and engine.stats().num_preemptions_total > 0
  # Prefix hits read blocks quantized by an earlier request.
  shared = [prompts[2][:24] + p for p in prompts]
  llm = LLM(loaded_model=model, kv_cache_dtype=name, num_blocks=96,
            **dict(ENGINE, max_model_len=160))
  first = [o.token_ids for o in llm.generate(prompt_token_ids=shared, use_tqdm=False,
                                             sampling_params=GREEDY)]
  hits = llm.engine.stats().prefix_hit_tokens_total
  again = [o.token_ids for o in llm.generate(prompt_token_ids=shared, use_tqdm=False,
                                             sampling_params=GREEDY)]
  assert again == first and llm.engine.stats().prefix_hit_tokens_total > hits


@pytest.mark.parametrize("name", NAMES)
def test_speculative_decoding_over_an_8bit_cache_gives_the_same_tokens(name):
  """The verify step writes and reads the (values, scales) cache through the prefill seam:
  n-gram drafts over repeated prompts, accepted or not, leave the greedy output unchanged."""
  model = tiny_model()
  rng = np.random.default_rng(2)
  prompts = [np.tile(rng.integers(0, 384, n), 4).tolist() for n in (3, 5, 7)] + tiny_prompts()
  want, _ = _generate(model, prompts, kv_cache_dtype=name, num_blocks=96)
  got, engine = _generate(model, prompts, kv_cache_dtype=name, num_blocks=96,
                          speculative="ngram", num_speculative_tokens=3)
  assert got == want
  stats = engine.stats()
  assert stats.spec_proposed_tokens_total > stats.spec_accepted_tokens_total > 0
  assert isinstance(engine.runner.kv_cache, quantization.QuantizedKV)
