"""The KV write: slots land where the layout says and nothing else moves.

Both backends run on every case: "xla" (the scatter) and the Triton Pallas
kernel (interpret mode on CPU, compiled on a GPU; see helpers.INTERPRET).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16

CASES = [  # block_size, hkv, d, dtype, real tokens, padded tokens
    (8, 3, 64, np.float32, 5, 2),  # SmolLM2's 3 KV heads
    (16, 8, 128, BF16, 9, 4),  # Llama-3-8B heads; colliding padding
    (32, 1, 64, BF16, 1, 0),  # a single token
    (8, 8, 64, np.float32, 13, 0),  # 13 tokens: not a power of two
    (32, 3, 128, np.float32, 6, 5),
]


def _write_fns():
  """Every implementation under test, as (name, fn(cache, k, v, slots))."""
  return [
      ("reference", pk.write_kv_reference),
      ("xla", lambda *a: pk.write_kv(*a, backend="xla")),
      (helpers.BACKEND, lambda *a: pk.write_kv(
          *a, backend=helpers.BACKEND, interpret=helpers.INTERPRET)),
      # No Mosaic GPU KV write yet: "mosaic" runs the Triton kernel.
      ("mosaic", lambda *a: pk.write_kv(
          *a, backend="mosaic", interpret=helpers.INTERPRET)),
  ]


def _problem(rng, block_size, hkv, d, dtype, real, padded):
  """Random cache; real tokens at shuffled distinct slots outside block 0,
  padded tokens in block 0 (two of them share slot 0 when there are >= 3).
  """
  num_blocks = 1 + -(-real // block_size) + 2  # null + needed + spare
  cache = rng.standard_normal((num_blocks, hkv, 2, block_size, d))
  real_slots = rng.permutation(np.arange(block_size, num_blocks * block_size))
  pad_slots = rng.integers(0, block_size, padded)
  if padded >= 3:
    pad_slots[:2] = 0
  slots = np.concatenate([real_slots[:real], pad_slots]).astype(np.int32)
  order = rng.permutation(len(slots))  # padding interleaved with real tokens
  slots = slots[order]
  k = rng.standard_normal((len(slots), hkv, d))
  v = rng.standard_normal((len(slots), hkv, d))
  return (cache.astype(dtype), k.astype(dtype), v.astype(dtype), slots)


def _check(out, cache, k, v, slots, block_size):
  """Exact placement; other slots untouched; padded slots hold one of the
  values written there (per element: colliding stores may interleave)."""
  out = np.array(out, np.float32)
  want = np.asarray(cache, np.float32).copy()
  candidates = {}  # slot in block 0 -> list of [hkv, 2, d]
  for t, s in enumerate(slots):
    kv = np.stack([k[t], v[t]], axis=1).astype(np.float32)  # [hkv, 2, d]
    want[s // block_size, :, :, s % block_size] = kv
    if s < block_size:
      candidates.setdefault(int(s), []).append(kv)
  for s, kvs in candidates.items():
    got = out[0, :, :, s]  # [hkv, 2, d]
    assert np.any([got == c for c in kvs], axis=0).all(), f"slot {s}"
    out[0, :, :, s] = want[0, :, :, s]  # checked; compare the rest exactly
  np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: f"bs{c[0]}-hkv{c[1]}-d{c[2]}-n{c[4]}")
def test_write_kv_places_tokens_and_touches_nothing_else(case):
  block_size, hkv, d, dtype, real, padded = case
  rng = np.random.default_rng(block_size * 10 + hkv)
  cache, k, v, slots = _problem(rng, *case)
  args = (jnp.asarray(cache), jnp.asarray(k), jnp.asarray(v),
          jnp.asarray(slots))
  for name, fn in _write_fns():
    out = fn(*args)
    assert out.shape == cache.shape and out.dtype == cache.dtype, name
    _check(out, cache, k, v, slots, block_size)
    # The caller's cache is intact: without donation nothing is clobbered.
    np.testing.assert_array_equal(np.asarray(args[0]), cache)


def test_write_kv_casts_to_cache_dtype():
  """float32 k/v into a bf16 cache round like the reference's astype."""
  rng = np.random.default_rng(3)
  cache = jnp.zeros((3, 2, 2, 8, 64), jnp.bfloat16)
  k = jnp.asarray(rng.standard_normal((3, 2, 64)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((3, 2, 64)), jnp.float32)
  slots = jnp.asarray([9, 8, 17], jnp.int32)
  want = np.asarray(pk.write_kv_reference(cache, k, v, slots), np.float32)
  assert want[1, :, 0, 1].any()
  for name, fn in _write_fns()[1:]:
    out = fn(cache, k, v, slots)
    assert out.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(np.asarray(out, np.float32), want)


def test_write_kv_no_tokens_returns_cache():
  cache = jnp.arange(2 * 1 * 2 * 8 * 64, dtype=jnp.float32).reshape(
      2, 1, 2, 8, 64)
  k = jnp.zeros((0, 1, 64))
  for _, fn in _write_fns():
    out = fn(cache, k, k, jnp.zeros((0,), jnp.int32))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(cache))


@pytest.mark.parametrize("backend", ["xla", helpers.BACKEND])
def test_write_kv_is_in_place_when_donated(backend):
  """Under jit with the cache donated, the output reuses the cache buffer.

  (That values are replaced, not added, is checked above on a random cache.)
  """
  cache = jnp.zeros((4, 2, 2, 8, 64), jnp.float32)
  step = jax.jit(
      lambda c, k, v, s: pk.write_kv(c, k, v, s, backend=backend,
                                     interpret=helpers.INTERPRET),
      donate_argnums=0)
  k = jnp.ones((3, 2, 64))
  ptr = cache.unsafe_buffer_pointer()
  out = step(cache, k, 2 * k, jnp.arange(3, dtype=jnp.int32) + 8)
  # NOTE: CPU and GPU both honour donation; the Pallas call aliases its
  # output to the cache operand, so XLA needs no copy on either.
  assert out.unsafe_buffer_pointer() == ptr
  assert cache.is_deleted()
  got = np.array(out)
  np.testing.assert_array_equal(got[1, :, 0, :3], 1.0)
  np.testing.assert_array_equal(got[1, :, 1, :3], 2.0)
  got[1, :, :, :3] = 0.0
  assert not got.any(), "only slots 8..10 were written"
