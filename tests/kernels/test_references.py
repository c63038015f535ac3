"""The jnp references against a dense float64 numpy oracle."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16


@pytest.mark.parametrize(
    "block_size,hq,hkv,d,dtype,lengths",
    [
        (8, 4, 4, 64, np.float32, [1, 8, 13, 0]),
        (16, 12, 4, 64, np.float32, [33, 16, 1]),
        (32, 8, 1, 128, BF16, [100, 0, 64]),
        (256, 9, 3, 64, np.float32, [300, 256, 2]),
    ],
)
def test_decode_reference_matches_numpy(block_size, hq, hkv, d, dtype, lengths):
  rng = np.random.default_rng(block_size + hq)
  paged = helpers.make_paged(rng, lengths, hkv, d, block_size, dtype)
  q = rng.standard_normal((len(lengths), hq, d)).astype(dtype)
  out = pk.paged_decode_attention_reference(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray(lengths, jnp.int32))
  want = helpers.naive_decode(q.astype(np.float64), paged, lengths, d ** -0.5)
  assert helpers.rel_err(out, want) < helpers.tolerance(dtype)
  for b, n in enumerate(lengths):
    if n == 0:
      assert not np.asarray(out[b], np.float32).any()


@pytest.mark.parametrize(
    "block_size,hq,hkv,q_lens,kv_lens",
    [
        (8, 4, 2, [5, 0, 9], [5, 0, 30]),  # no prefix, padded seq, prefix
        (16, 3, 1, [7, 20], [23, 20]),  # chunk starting mid-block
        (32, 8, 8, [1, 40], [70, 40]),
        (16, 4, 2, [6, 11, 0, 0], [6, 30, 0, 0]),  # the engine's trailing empty sequences
    ],
)
def test_prefill_reference_matches_numpy(block_size, hq, hkv, q_lens, kv_lens):
  rng = np.random.default_rng(block_size)
  d = 64
  paged = helpers.make_paged(rng, kv_lens, hkv, d, block_size, np.float32)
  num_tokens = sum(q_lens) + 5  # trailing padding
  q = rng.standard_normal((num_tokens, hq, d)).astype(np.float32)
  cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
  out = pk.paged_prefill_attention_reference(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray(cu),
      jnp.asarray(kv_lens, jnp.int32))
  want = helpers.naive_prefill(q, paged, q_lens, kv_lens, d ** -0.5)
  assert helpers.rel_err(out, want) < 1e-5
  assert not np.asarray(out[sum(q_lens):]).any()


def test_reference_scale_argument():
  rng = np.random.default_rng(3)
  paged = helpers.make_paged(rng, [20], 2, 64, 8, np.float32)
  q = rng.standard_normal((1, 4, 64)).astype(np.float32)
  out = pk.paged_decode_attention_reference(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray([20], jnp.int32), scale=0.3)
  want = helpers.naive_decode(q, paged, [20], 0.3)
  assert helpers.rel_err(out, want) < 1e-5
  wrong_scale = helpers.naive_decode(q, paged, [20], 0.125)
  assert helpers.rel_err(out, wrong_scale) > 1e-2
