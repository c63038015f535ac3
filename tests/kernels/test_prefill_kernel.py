"""The Pallas prefill kernel (interpret mode on CPU) against the oracles."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import prefill_tiles
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16

CASES = [  # block_size, hq, hkv, d, dtype, q_lens, kv_lens
    (8, 4, 4, 64, np.float32, [5, 0, 9], [5, 0, 30]),  # mixed prefix / none
    (16, 12, 4, 64, BF16, [7, 20, 3], [23, 20, 50]),  # chunks start mid-block
    (32, 16, 4, 128, np.float32, [40, 1], [70, 1]),
    (64, 8, 1, 64, BF16, [65, 10], [130, 10]),  # GQA 8
    (128, 6, 2, 64, np.float32, [33], [300]),
    (256, 9, 3, 64, np.float32, [100, 17], [300, 17]),
    (16, 4, 1, 64, np.float32, [150, 40], [2600, 40]),  # long prefix
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"bs{c[0]}-{c[1]}x{c[2]}")
def test_prefill_kernel_matches_oracle(case):
  block_size, hq, hkv, d, dtype, q_lens, kv_lens = case
  rng = np.random.default_rng(block_size + 3 * hq)
  paged = helpers.make_paged(rng, kv_lens, hkv, d, block_size, dtype)
  num_tokens = sum(q_lens) + 6  # padded tokens at the end
  q = rng.standard_normal((num_tokens, hq, d)).astype(dtype)
  cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
  args = (jnp.asarray(q), jnp.asarray(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(cu),
          jnp.asarray(kv_lens, jnp.int32))
  out = np.asarray(pk.paged_prefill_attention(
      *args, backend=helpers.BACKEND, interpret=helpers.INTERPRET), np.float64)
  q64 = q.astype(np.float64)
  scale = d ** -0.5
  tol = helpers.tolerance(dtype)
  want = helpers.naive_prefill(q64, paged, q_lens, kv_lens, scale)
  assert helpers.rel_err(out, want) < tol
  assert helpers.rel_err(out, pk.paged_prefill_attention_reference(*args)) < tol
  assert not out[sum(q_lens):].any(), "padded tokens must be zeros"
  # Mutations of the oracle must fail the same tolerance.
  for mutation in (dict(swap_kv=True), dict(causal_shift=-1)):
    broken = helpers.naive_prefill(q64, paged, q_lens, kv_lens, scale,
                                   **mutation)
    assert helpers.rel_err(out, broken) > tol, mutation


def test_causal_shift_forward_is_caught():
  """A mask that lets a token see the next one (off by one) must fail."""
  rng = np.random.default_rng(0)
  q_lens, kv_lens = [12], [20]
  paged = helpers.make_paged(rng, kv_lens, 2, 64, 8, np.float32)
  q = rng.standard_normal((12, 4, 64)).astype(np.float32)
  out = pk.paged_prefill_attention(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray([0, 12], jnp.int32),
      jnp.asarray(kv_lens, jnp.int32), backend=helpers.BACKEND,
      interpret=helpers.INTERPRET)
  # Only rows before the last can see one more real token.
  broken = helpers.naive_prefill(q[:11], paged, [11], [19], 64 ** -0.5,
                                 causal_shift=1)
  assert helpers.rel_err(np.asarray(out)[:11], broken) > 1e-5


@pytest.mark.parametrize("block_q", [4, 16])
def test_tiles_cover_tokens_once(block_q):
  q_lens = np.array([5, 0, 17, 1, 4])
  cu = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  kv_lens = jnp.asarray(q_lens + 3, jnp.int32)
  num_tokens = int(q_lens.sum()) + 3
  tiles = prefill_tiles.make_tiles(cu, kv_lens, num_tokens, block_q)
  seen = np.zeros(num_tokens, int)
  for seq, start, rows, pos in zip(*map(np.asarray, tiles[:4])):
    seen[start:start + rows] += 1
    if rows:
      assert cu[seq] <= start and start + rows <= cu[seq + 1]
      assert pos == kv_lens[seq] - q_lens[seq] + (start - cu[seq])
  assert (seen[:q_lens.sum()] == 1).all() and not seen[q_lens.sum():].any()
