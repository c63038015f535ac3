"""Unit checks of the decoder's seams: packed token axis, jit with static config."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.config import ModelConfig, RopeScaling
from models.layers import rope_inv_freq
from models.llama import compute_logits, forward
from models.reference import dense_attention, empty_cache, reference_logits
from models.weights.random_init import random_params
from tests.models.helpers import TINY_HF_CONFIG

CONFIG = ModelConfig.from_hf_config(TINY_HF_CONFIG)


def _packed_attention(q, k, v, kv_cache, layer, attn_meta):
  """Dense attention over a packed axis: token t sees earlier tokens of its own
  sequence only (what the paged engine does with its metadata)."""
  seq, pos = attn_meta["seq"], attn_meta["positions"]
  group = q.shape[1] // k.shape[1]
  kk, vv = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)
  scores = jnp.einsum("thd,shd->hts", q, kk) / np.sqrt(q.shape[-1])
  mask = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])
  probs = jax.nn.softmax(jnp.where(mask[None], scores, -jnp.inf), axis=-1)
  return jnp.einsum("hts,shd->thd", probs, vv), kv_cache + 1    # counts the layers run


def test_packed_sequences_match_separate_forwards():
  params = random_params(CONFIG, seed=1)
  a, b = [1, 5, 9, 12, 30], [2, 7, 44]
  tokens = jnp.asarray(a + b, jnp.int32)
  positions = jnp.asarray(list(range(len(a))) + list(range(len(b))), jnp.int32)
  meta = {"seq": jnp.asarray([0] * len(a) + [1] * len(b)), "positions": positions}
  jitted = jax.jit(forward, static_argnames=("config", "attention_fn"))
  hidden, layers_run = jitted(params, CONFIG, tokens, positions, jnp.int32(0), meta,
                              _packed_attention)
  assert hidden.shape == (8, CONFIG.hidden_size) and int(layers_run) == CONFIG.num_layers
  logits = np.asarray(compute_logits(params, CONFIG, hidden))
  np.testing.assert_allclose(logits[:5], reference_logits(CONFIG, params, a), atol=1e-5)
  np.testing.assert_allclose(logits[5:], reference_logits(CONFIG, params, b), atol=1e-5)


def test_config_is_hashable_and_roundtrips():
  cfg = dataclasses.replace(CONFIG, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192))
  assert hash(cfg) == hash(dataclasses.replace(cfg))
  assert ModelConfig.from_hf_config(cfg.to_hf_config()) == cfg


def test_llama3_rope_scaling_bands():
  """High frequencies unchanged, low ones divided by factor, blend in between."""
  base = ModelConfig(8, 128, 8, 1, 1, 1, 128, rope_theta=500000.0)
  scaled = dataclasses.replace(base, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192))
  f0, f1 = rope_inv_freq(base), rope_inv_freq(scaled)
  wavelen = 2 * np.pi / f0
  high, low = wavelen < 8192 / 4, wavelen > 8192
  np.testing.assert_array_equal(f1[high], f0[high])
  np.testing.assert_allclose(f1[low], f0[low] / 32, rtol=1e-6)
  mid = ~high & ~low
  assert mid.any() and np.all(f1[mid] < f0[mid]) and np.all(f1[mid] > f0[mid] / 32)


def test_bfloat16_forward_close_to_float32():
  params = random_params(CONFIG, seed=2)
  bf16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  ids = [1, 5, 9, 12, 30, 31, 2]
  f32, b16 = reference_logits(CONFIG, params, ids), reference_logits(CONFIG, bf16, ids)
  assert b16.dtype == np.float32
  assert np.max(np.abs(f32 - b16)) < 0.05 * np.max(np.abs(f32)) + 1e-2


def test_forward_rejects_unstacked_or_wrong_depth_params():
  params = random_params(CONFIG)
  cache = empty_cache(CONFIG, 16, jnp.float32)
  tokens = jnp.zeros(4, jnp.int32)
  run = lambda p: forward(p, CONFIG, tokens, tokens, cache, {"positions": tokens},
                          dense_attention)
  one_layer = dict(params, layers=jax.tree_util.tree_map(lambda x: x[:1], params["layers"]))
  with pytest.raises(ValueError, match=r"params stack \[1\] layers, model has 2"):
    run(one_layer)
  old = {k: v for k, v in params.items() if k != "layers"}
  old["layers_0"] = jax.tree_util.tree_map(lambda x: x[0], params["layers"])
  with pytest.raises(ValueError, match="old per-layer layout"):
    run(old)

