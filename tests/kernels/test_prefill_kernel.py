"""The Pallas prefill kernel (interpret mode on CPU) against the oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import prefill_tiles
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
# "mosaic" runs the Mosaic GPU kernel on bf16 cases and falls back to Triton
# on float32 ones (pallas_kernels/prefill.py).
BACKENDS = ("triton", "mosaic")

CASES = [  # block_size, hq, hkv, d, dtype, q_lens, kv_lens
    (8, 4, 4, 64, np.float32, [5, 0, 9], [5, 0, 30]),  # mixed prefix / none
    (16, 12, 4, 64, BF16, [7, 20, 3], [23, 20, 50]),  # chunks start mid-block
    (32, 16, 4, 128, np.float32, [40, 1], [70, 1]),
    (64, 8, 1, 64, BF16, [65, 10], [130, 10]),  # GQA 8
    (128, 6, 2, 64, np.float32, [33], [300]),
    (256, 9, 3, 64, np.float32, [100, 17], [300, 17]),
    (16, 4, 1, 64, np.float32, [150, 40], [2600, 40]),  # long prefix
    # bf16 (the Mosaic kernel's dtype):
    (8, 4, 4, 64, BF16, [5, 0, 9], [5, 0, 30]),  # GQA 1, empty sequence
    (32, 16, 4, 128, BF16, [40, 1], [70, 1]),  # head_dim 128, length 1
    (128, 6, 2, 64, BF16, [33], [300]),  # group 3
    (256, 9, 3, 64, BF16, [100, 17], [300, 17]),  # blocks > a K/V step
    (16, 8, 2, 64, BF16, [128, 16], [256, 16]),  # exact block/step multiples
    (16, 4, 1, 64, BF16, [60, 40], [700, 40]),  # prefix over 6 K/V steps
]


def _problem(case, extra_tokens=6):
  """Random packed problem; returns (args, q, paged)."""
  block_size, hq, hkv, d, dtype, q_lens, kv_lens = case
  rng = np.random.default_rng(block_size + 3 * hq)
  paged = helpers.make_paged(rng, kv_lens, hkv, d, block_size, dtype)
  num_tokens = sum(q_lens) + extra_tokens  # padded tokens at the end
  q = rng.standard_normal((num_tokens, hq, d)).astype(dtype)
  cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
  args = (jnp.asarray(q), jnp.asarray(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(cu),
          jnp.asarray(kv_lens, jnp.int32))
  return args, q, paged


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: (
    f"bs{c[0]}-{c[1]}x{c[2]}x{c[3]}-{np.dtype(c[4]).name}-{c[6][0]}"))
def test_prefill_kernel_matches_oracle(case, backend):
  block_size, hq, hkv, d, dtype, q_lens, kv_lens = case
  args, q, paged = _problem(case)
  out = np.asarray(pk.paged_prefill_attention(
      *args, backend=backend, interpret=helpers.INTERPRET), np.float64)
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


@pytest.mark.parametrize("backend,dtype", [("triton", np.float32),
                                           ("mosaic", BF16)])
def test_causal_shift_forward_is_caught(backend, dtype):
  """A mask that lets a token see the next one (off by one) must fail."""
  rng = np.random.default_rng(0)
  q_lens, kv_lens = [12], [20]
  paged = helpers.make_paged(rng, kv_lens, 2, 64, 8, dtype)
  q = rng.standard_normal((12, 4, 64)).astype(dtype)
  out = pk.paged_prefill_attention(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray([0, 12], jnp.int32),
      jnp.asarray(kv_lens, jnp.int32), backend=backend,
      interpret=helpers.INTERPRET)
  q64 = q.astype(np.float64)
  # Only rows before the last can see one more real token.
  broken = helpers.naive_prefill(q64[:11], paged, [11], [19], 64 ** -0.5,
                                 causal_shift=1)
  want = helpers.naive_prefill(q64, paged, q_lens, kv_lens, 64 ** -0.5)
  out = np.asarray(out, np.float64)
  assert helpers.rel_err(out, want) < helpers.tolerance(dtype)
  assert helpers.rel_err(out[:11], broken) > helpers.tolerance(dtype)


@pytest.mark.parametrize("block_q,align", [(4, 1), (16, 1), (8, 8), (16, 8)])
def test_tiles_cover_tokens_once(block_q, align):
  q_lens = np.array([5, 0, 17, 1, 4, 9])
  cu = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  kv_lens = jnp.asarray(q_lens + 3, jnp.int32)
  num_tokens = int(q_lens.sum()) + 3
  tiles = prefill_tiles.make_tiles(cu, kv_lens, num_tokens, block_q, align)
  seen = np.zeros(num_tokens, int)
  for seq, start, rows, pos, _, window in zip(*map(np.asarray, tiles)):
    seen[start:start + rows] += 1
    if rows:
      assert cu[seq] <= start and start + rows <= cu[seq + 1]
      assert pos == kv_lens[seq] - q_lens[seq] + (start - cu[seq])
      assert window % align == 0 and window <= start
      assert start + rows <= window + block_q
  assert (seen[:q_lens.sum()] == 1).all() and not seen[q_lens.sum():].any()


def _round_trip_problem(group):
  q_lens = np.array([5, 0, 17, 1, 4, 9])
  cu = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  kv_lens = jnp.asarray(q_lens + 3, jnp.int32)
  num_tokens, hkv, d = 40, 2, 8
  q = jax.random.normal(jax.random.key(0), (num_tokens, hkv * group, d))
  return q_lens, cu, kv_lens, q, hkv


@pytest.mark.parametrize("block_q,group,group_pad,align",
                         [(4, 3, 4, 1), (16, 2, 2, 1), (8, 3, 4, 8)])
def test_tile_slots_round_trip(block_q, group, group_pad, align):
  """gather_slots puts token i of a tile at slot tile * block_q + i, and
  scatter_slots (a gather through token_slots) brings every token back;
  padding tokens come back as zeros."""
  q_lens, cu, kv_lens, q, hkv = _round_trip_problem(group)
  num_tokens, d = q.shape[0], q.shape[-1]
  tiles = prefill_tiles.make_tiles(cu, kv_lens, num_tokens, block_q, align)
  slots = prefill_tiles.gather_slots(q, tiles, hkv, group_pad, block_q)
  assert slots.shape == (tiles.seq.shape[0] * block_q, hkv, group_pad, d)
  for t, (start, rows) in enumerate(zip(*map(np.asarray, tiles[1:3]))):
    got = np.asarray(slots[t * block_q:(t + 1) * block_q])
    want = np.asarray(q[start:start + rows]).reshape(rows, hkv, group, d)
    np.testing.assert_array_equal(got[:rows, :, :group], want)
    assert not got[rows:].any() and not got[:, :, group:].any()
  boxes = prefill_tiles.q_boxes(tiles, num_tokens, block_q, direct=False)
  back = prefill_tiles.scatter_slots(slots, cu, num_tokens, group, tiles,
                                     boxes.shift, align)
  n = int(q_lens.sum())
  np.testing.assert_array_equal(np.asarray(back[:n]), np.asarray(q[:n]))
  assert not np.asarray(back[n:]).any()


@pytest.mark.parametrize("block_q", [8, 16, 32])
def test_direct_boxes_round_trip(block_q):
  """Direct Q boxes start at multiples of 8 inside q (the last clamped to
  T - block_q), cover their tile's tokens at row `shift`, and scatter_slots
  maps box rows back to tokens, as the Mosaic kernel reads and writes them."""
  q_lens, cu, kv_lens, q, hkv = _round_trip_problem(2)
  num_tokens = q.shape[0]
  tiles = prefill_tiles.make_tiles(cu, kv_lens, num_tokens, block_q, 8)
  boxes = prefill_tiles.q_boxes(tiles, num_tokens, block_q, direct=True)
  q_row, shift = np.asarray(boxes.q_row), np.asarray(boxes.shift)
  used = np.asarray(tiles.rows) > 0
  assert (q_row % 8 == 0).all() and (q_row + block_q <= num_tokens).all()
  assert (q_row[used] + shift[used] == np.asarray(tiles.start)[used]).all()
  assert (shift[used] + np.asarray(tiles.rows)[used] <= block_q).all()
  q4 = q.reshape(num_tokens, hkv, 2, -1)
  out = jnp.concatenate([q4[r:r + block_q] for r in q_row])  # kernel's copy
  back = prefill_tiles.scatter_slots(out, cu, num_tokens, 2, tiles,
                                     boxes.shift, 8)
  n = int(q_lens.sum())
  np.testing.assert_array_equal(np.asarray(back[:n]), np.asarray(q[:n]))
  assert not np.asarray(back[n:]).any()
