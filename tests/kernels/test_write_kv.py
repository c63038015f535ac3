"""The KV write: slots land where the layout says and nothing else moves."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk


@pytest.mark.parametrize("block_size,dtype",
                         [(8, jnp.float32), (32, jnp.bfloat16)])
def test_write_kv_places_tokens_and_touches_nothing_else(block_size, dtype):
  rng = np.random.default_rng(block_size)
  num_blocks, hkv, d = 6, 3, 64
  cache = rng.standard_normal((num_blocks, hkv, 2, block_size, d))
  cache = jnp.asarray(cache, dtype)
  slots = np.array([block_size * 3 + 1, block_size * 2, 5 * block_size - 1,
                    0, 1], np.int32)  # last two: padded tokens in block 0
  k = jnp.asarray(rng.standard_normal((5, hkv, d)), dtype)
  v = jnp.asarray(rng.standard_normal((5, hkv, d)), dtype)
  for fn in (pk.write_kv, pk.write_kv_reference):
    out = np.asarray(fn(cache, k, v, jnp.asarray(slots)), np.float32)
    want = np.asarray(cache, np.float32).copy()
    for t, s in enumerate(slots):
      want[s // block_size, :, 0, s % block_size] = np.asarray(k[t], np.float32)
      want[s // block_size, :, 1, s % block_size] = np.asarray(v[t], np.float32)
    np.testing.assert_array_equal(out, want)


def test_write_kv_is_in_place_when_donated():
  """Under jit with the cache donated, XLA reuses the cache buffer.

  (That values are replaced, not added, is checked above on a random cache.)
  """
  cache = jnp.zeros((4, 2, 2, 8, 64), jnp.float32)
  step = jax.jit(pk.write_kv, donate_argnums=0)
  k = jnp.ones((3, 2, 64))
  ptr = cache.unsafe_buffer_pointer()
  out = step(cache, k, 2 * k, jnp.arange(3, dtype=jnp.int32) + 8)
  if jax.default_backend() == "cpu":
    assert out.unsafe_buffer_pointer() == ptr
  np.testing.assert_array_equal(np.asarray(out[1, :, 1, :3]), 2.0)
  assert cache.is_deleted()
