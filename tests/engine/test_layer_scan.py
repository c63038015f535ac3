"""The decoder layers under one `lax.scan` (issue 19): a step's compiled program does not grow
with the depth, the one KV cache of all layers is updated in place (donated, never copied),
and the Pallas kernels (interpret mode) give the XLA path's result over the flat cache."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import LLM, SamplingParams, packing
from engine.step_inputs import empty_decode, empty_prefill
from engine.steps import decode_attention, layered, make_steps, prefill_attention
from models import LoadedModel, ModelConfig
from models import llama
from models.weights.random_init import random_params
from benchmarks import hlo

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")
BLOCK = 8
ENGINE = dict(block_size=BLOCK, max_num_seqs=4, max_batch_tokens=16, max_model_len=64)


def tiny(num_layers: int, **config) -> LoadedModel:
  cfg = dataclasses.replace(ModelConfig.from_json(TINY), num_layers=num_layers, **config)
  return LoadedModel(cfg, random_params(cfg, seed=num_layers), None, f"tiny-{num_layers}")


def compiled(llm: LLM, kind: str, decode_steps: int = 1) -> jax.stages.Compiled:
  """The engine's step for one padded bucket (4 rows / 16 tokens, 8 blocks wide), on its own
  params, cache and token buffer."""
  runner = llm.engine.runner
  trash = runner.trash_slot
  x = empty_decode(4, 8, trash) if kind == "decode" else empty_prefill(16, 4, 8, trash)
  ints, floats, layout = packing.pack(x)
  decode, prefill = make_steps(llm.engine.model.config, None, None)
  step, static = (decode, {"decode_steps": decode_steps}) if kind == "decode" else (prefill, {})
  return step.lower(runner.model.params, runner.kv_cache, runner.token_buffer, ints, floats,
                    layout=layout, **static).compile()


STEPS = [("decode", 1), ("decode", 4), ("prefill", 1)]


@pytest.fixture(scope="module")
def engines():
  return {n: LLM(loaded_model=tiny(n), num_blocks=64, **ENGINE) for n in (2, 4)}


@pytest.mark.parametrize("kind,decode_steps", STEPS)
def test_compiled_step_does_not_grow_with_the_layers(engines, kind, decode_steps):
  texts = {n: compiled(llm, kind, decode_steps).as_text() for n, llm in engines.items()}
  assert hlo.instruction_count(texts[2]) == hlo.instruction_count(texts[4])
  assert len(hlo.instructions(texts[4].splitlines(), "dot")) == \
      len(hlo.instructions(texts[2].splitlines(), "dot"))
  # One layer loop per forward (decode_steps of them), run once per layer.
  for n, text in texts.items():
    assert [trip for _, trip in hlo.while_loops(text) if trip == n] == [n] * decode_steps


@pytest.fixture(scope="module")
def big_cache_engine():
  """The cache (2 layers x 2048 blocks, 8 MiB) far outweighs every other buffer of a step."""
  return LLM(loaded_model=tiny(2), num_blocks=2048, **ENGINE)


@pytest.mark.parametrize("kind,decode_steps", STEPS)
def test_step_updates_the_one_cache_in_place(big_cache_engine, kind, decode_steps):
  runner = big_cache_engine.engine.runner
  cache = runner.kv_cache
  assert cache.shape == (2 * 2048, 2, 2, BLOCK, 16)      # [layers * blocks, kv, K/V, bs, d]
  step = compiled(big_cache_engine, kind, decode_steps)
  text = step.as_text()
  # Donated: the updated cache (output 0) is the cache argument's buffer.
  cache_param = len(jax.tree_util.tree_leaves(runner.model.params))
  assert hlo.input_output_aliases(text)[0] == cache_param
  # Never copied: no temporary buffer could hold it, no copy instruction makes one.
  memory = step.memory_analysis()
  assert memory.alias_size_in_bytes >= cache.nbytes
  assert memory.temp_size_in_bytes < cache.nbytes // 8, memory
  shape = f"f32[{','.join(map(str, cache.shape))}]"
  assert not [line for line in hlo.instructions(text.splitlines(), "copy") if shape in line]
  # The layer loop carries it (its state holds the cache shape).
  bodies = hlo.computations(text)
  loops = [body for body, trip in hlo.while_loops(text) if trip == 2]
  assert len(loops) == decode_steps and all(shape in bodies[b][0] for b in loops)


def test_engine_steps_keep_the_cache_buffer(big_cache_engine):
  runner = big_cache_engine.engine.runner
  before = runner.kv_cache.unsafe_buffer_pointer()
  outs = big_cache_engine.generate(
      prompt_token_ids=[[5, 6, 7, 8, 9] * 5, [3, 1]], use_tqdm=False,
      sampling_params=SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
  assert [len(o.token_ids) for o in outs] == [6, 6]
  assert runner.kv_cache.unsafe_buffer_pointer() == before
  # Each layer wrote the requests' blocks in its own rows, with its own K/V.
  layers = np.asarray(runner.kv_cache).reshape(2, 2048, -1)
  written = [set(np.flatnonzero(np.any(layer[1:] != 0, axis=1)) + 1) for layer in layers]
  assert written[0] == written[1] and len(written[0]) == 5    # 4 + 1 blocks of 8 tokens
  rows = sorted(written[0])
  assert not np.allclose(layers[0, rows], layers[1, rows])


def test_engine_rejects_params_in_the_old_per_layer_layout():
  model = tiny(2)
  old = {k: v for k, v in model.params.items() if k != "layers"}
  for i in range(2):
    old[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], model.params["layers"])
  with pytest.raises(ValueError, match="old per-layer layout"):
    LLM(loaded_model=dataclasses.replace(model, params=old), num_blocks=16, **ENGINE)


def _forward(model, cache, meta, seam):
  tokens = jnp.arange(meta["slots"].shape[0], dtype=jnp.int32) * 7 % 500
  run = jax.jit(llama.forward, static_argnames=("config", "attention_fn"))
  return run(model.params, model.config, tokens, meta.pop("positions"), cache, meta, seam)


def prefill_then_decode(model: LoadedModel, cache) -> dict[str, tuple]:
  """A 3-layer prefill of two sequences (sequence 0: positions 4..13, 4 cached; sequence 1:
  0..5; 2 padding tokens), then one decode step, through the engine's layered seams, with
  the XLA path and with the Triton kernels in interpret mode: {backend: (prefill hidden
  states of the 16 real tokens, decode hidden states, the cache afterwards)}."""
  tables = jnp.asarray([[1, 2, 3], [4, 5, 0]], jnp.int32)
  pos = np.r_[np.arange(4, 14), np.arange(6), 0, 0].astype(np.int32)
  seq_blocks = np.r_[np.full(10, 0), np.full(6, 1)]
  slots = np.r_[np.asarray(tables)[seq_blocks, pos[:16] // BLOCK] * BLOCK + pos[:16] % BLOCK,
                0, 0].astype(np.int32)
  prefill_meta = {"positions": jnp.asarray(pos), "slots": jnp.asarray(slots),
                  "block_tables": tables, "cu_q_lens": jnp.asarray([0, 10, 16], jnp.int32),
                  "kv_lens": jnp.asarray([14, 6], jnp.int32)}
  decode_meta = {"positions": jnp.asarray([14, 6], jnp.int32),
                 "slots": jnp.asarray([2 * BLOCK + 6, 4 * BLOCK + 6], jnp.int32),
                 "block_tables": tables, "lengths": jnp.asarray([15, 7], jnp.int32)}
  results = {}
  for backend, interpret in (("xla", False), ("triton", True)):
    seam = functools.partial(prefill_attention, backend=backend, interpret=interpret)
    hidden, out = _forward(model, cache, dict(prefill_meta), layered(seam, 3))
    seam = functools.partial(decode_attention, backend=backend, interpret=interpret)
    last, out = _forward(model, out, dict(decode_meta), layered(seam, 3))
    results[backend] = (hidden[:16], last, out)
  return results


def test_pallas_kernels_match_the_xla_path_over_the_flat_cache():
  """A 3-layer prefill of two sequences (one after a cached prefix), then a decode step,
  through the engine's layered seams: Triton kernels (interpret mode) vs the XLA path."""
  model = tiny(3, num_heads=8, num_kv_heads=2)
  blocks = 8                                               # per layer; block 0 is null
  rng = np.random.default_rng(0)
  cache = jnp.asarray(rng.standard_normal((3 * blocks, 2, 2, BLOCK, 16)), jnp.float32)
  results = {backend: [np.asarray(a) for a in got]
             for backend, got in prefill_then_decode(model, cache).items()}
  for want, got in zip(results["xla"], results["triton"]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Every layer wrote its own rows (layer l: l * blocks + b) and nothing else moved.
  written = np.zeros(3 * blocks, bool)
  for layer in range(3):
    written[layer * blocks + np.array([1, 2, 4])] = True
  changed = np.any(results["xla"][2] != np.asarray(cache), axis=(1, 2, 3, 4))
  np.testing.assert_array_equal(changed[written], True)
  np.testing.assert_array_equal(changed[~written & (np.arange(3 * blocks) % blocks != 0)], False)
