"""The Pallas decode kernel (interpret mode on CPU) against the oracles."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import heuristics
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16

CASES = [  # block_size, hq, hkv, d, dtype, lengths, num_splits
    (8, 4, 4, 64, np.float32, [1, 8, 17, 0], None),  # GQA 1, padded row
    (16, 12, 4, 64, BF16, [16, 47, 0, 1], 2),  # GQA 3
    (32, 16, 4, 128, np.float32, [64, 100, 31], 3),  # GQA 4, ragged splits
    (64, 8, 1, 64, BF16, [200, 64, 1], None),  # GQA 8
    (128, 8, 2, 64, np.float32, [129, 0, 256], 2),
    (256, 9, 3, 64, np.float32, [300, 1], None),
    (16, 8, 1, 64, np.float32, [3000, 1500], None),  # long, split-K
    (128, 4, 1, 128, BF16, [4096, 2049], 4),
]


def _run(case, seed):
  block_size, hq, hkv, d, dtype, lengths, num_splits = case
  rng = np.random.default_rng(seed)
  paged = helpers.make_paged(rng, lengths, hkv, d, block_size, dtype)
  q = rng.standard_normal((len(lengths), hq, d)).astype(dtype)
  args = (jnp.asarray(q), jnp.asarray(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(lengths, jnp.int32))
  out = pk.paged_decode_attention(*args, backend=helpers.BACKEND,
                                  num_splits=num_splits,
                                  interpret=helpers.INTERPRET)
  return q.astype(np.float64), paged, args, np.asarray(out, np.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"bs{c[0]}-{c[1]}x{c[2]}")
def test_decode_kernel_matches_oracle(case):
  block_size, hq, hkv, d, dtype, lengths, _ = case
  q, paged, args, out = _run(case, seed=block_size * 7 + hq)
  scale = d ** -0.5
  tol = helpers.tolerance(dtype)
  want = helpers.naive_decode(q, paged, lengths, scale)
  assert helpers.rel_err(out, want) < tol
  ref = pk.paged_decode_attention_reference(*args)
  assert helpers.rel_err(out, ref) < tol
  for b, n in enumerate(lengths):
    if n == 0:
      assert not out[b].any(), "padding row must be zeros"
  # The tolerance is tight enough to catch a swapped K/V or a length off by one.
  swapped = helpers.naive_decode(q, paged, lengths, scale, swap_kv=True)
  assert helpers.rel_err(out, swapped) > 10 * tol
  short = [n for n in lengths if n >= 2]
  if short:
    shifted = helpers.naive_decode(q, paged, lengths, scale, causal_shift=-1)
    assert helpers.rel_err(out, shifted) > tol


def test_decode_split_counts_agree():
  """Every split count gives the same answer, including more splits than
  a short row has pages (empty splits must contribute nothing)."""
  case = (8, 8, 2, 64, np.float32, [5, 90, 0, 41], None)
  outs = []
  for splits in (1, 2, 5, 8):
    _, _, args, _ = _run(case, seed=11)
    outs.append(np.asarray(pk.paged_decode_attention(
        *args, backend=helpers.BACKEND, num_splits=splits,
        interpret=helpers.INTERPRET)))
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-6)


def test_decode_custom_scale():
  case = (16, 4, 2, 64, np.float32, [40, 7], None)
  rng = np.random.default_rng(5)
  paged = helpers.make_paged(rng, case[5], 2, 64, 16, np.float32)
  q = rng.standard_normal((2, 4, 64)).astype(np.float32)
  out = pk.paged_decode_attention(
      jnp.asarray(q), jnp.asarray(paged.kv_cache),
      jnp.asarray(paged.block_tables), jnp.asarray(case[5], jnp.int32),
      scale=0.5, backend=helpers.BACKEND, interpret=helpers.INTERPRET)
  want = helpers.naive_decode(q, paged, case[5], 0.5)
  assert helpers.rel_err(out, want) < 1e-5


def test_split_heuristic():
  assert heuristics.decode_num_splits(64, 8, 256, 16) == 1
  assert heuristics.decode_num_splits(8, 8, 512, 16) == 8
  assert heuristics.decode_num_splits(1, 1, 2, 16) == 1  # never > steps
  splits = heuristics.decode_num_splits(2, 2, 4096, 8)
  assert splits & (splits - 1) == 0 and 1 < splits <= heuristics.MAX_SPLITS


def test_short_rows_in_the_widest_table():
  """The engine passes the GPU kernel one table width, the model's whole context
  (engine/buckets.py): short rows at a small batch then get the heuristic's most splits,
  most of them past the rows' ends. Those read nothing (the unused table entries point at
  NaN-poisoned blocks) and contribute nothing."""
  lengths, hkv, d, block_size = [5, 40, 0], 2, 64, 16
  rng = np.random.default_rng(21)
  paged = helpers.make_paged(rng, lengths, hkv, d, block_size, np.float32, extra_cols=253)
  assert paged.block_tables.shape[1] == 256
  assert heuristics.decode_num_splits(len(lengths), hkv, 256, block_size) == 16
  q = rng.standard_normal((len(lengths), 8, d)).astype(np.float32)
  out = np.asarray(pk.paged_decode_attention(
      jnp.asarray(q), jnp.asarray(paged.kv_cache), jnp.asarray(paged.block_tables),
      jnp.asarray(lengths, jnp.int32), backend=helpers.BACKEND, interpret=helpers.INTERPRET),
      np.float64)
  want = helpers.naive_decode(q.astype(np.float64), paged, lengths, d ** -0.5)
  assert np.isfinite(out).all() and not out[2].any()
  assert helpers.rel_err(out, want) < helpers.tolerance(np.float32)


def test_split_size_follows_the_row_not_the_table():
  # 16 splits of a 256-block table, 4 pages per step: a 19-page row walks 4 pages per
  # split (5 splits busy), as with a table of its own width; a full row 16.
  assert heuristics.decode_pages_per_split(19, 16, 4) == 4
  assert heuristics.decode_pages_per_split(256, 16, 4) == 16
  assert heuristics.decode_pages_per_split(0, 16, 4) == 0
  for pages in range(300):
    for splits in (1, 2, 5, 16):
      per = heuristics.decode_pages_per_split(pages, splits, 4)
      assert per % 4 == 0 and splits * per >= pages and per - 4 < -(-pages // splits)


def test_backend_mosaic_runs_the_triton_decode():
  """No Mosaic GPU decode kernel yet: "mosaic" must give Triton's result."""
  _, _, args, want = _run(CASES[1], seed=5)
  out = pk.paged_decode_attention(*args, backend="mosaic", num_splits=2,
                                  interpret=helpers.INTERPRET)
  np.testing.assert_array_equal(np.asarray(out, np.float64), want)
