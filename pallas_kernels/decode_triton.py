"""Paged decode attention as a Pallas kernel lowered through Triton.

Grid: (batch, num_kv_heads, num_splits). One program handles all query heads
of one KV head for one split of one row's pages: each row's own pages are cut
into `num_splits` equal runs (whole inner-loop steps), so a short row in a wide
block table spreads over the splits as a long one does, and splits past its end
do nothing. The QK^T and PV products run
on tensor cores, which need 16 rows: a power-of-two group is read straight
from q [batch, q_heads, d] and repeated to 16 rows inside the kernel (the
copies compute the same values; one is written back, straight into the
output's [batch, q_heads, d]); any other group is zero-padded outside. It walks its
pages `pages_per_step` blocks at a time; each block's K (and V) is one
contiguous [block_size, head_dim] tile of the cache. Online softmax in
float32. With one split the kernel normalises and writes the output itself;
with several it writes (acc, max, sum) and `combine_splits` merges them.

A quantized cache (`QuantizedKV`) adds the K and V scales of the KV head,
`[num_blocks, block_size]` each, read with the same block ids as the tile:
8-bit K and V are converted to q's dtype (exact: int8 and e4m3 values are
bf16 numbers), K's scales multiply the score columns and V's the
probabilities before P V, so no element of the tile is rescaled.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import heuristics
from pallas_kernels import quantization

# NOTE: finite "minus infinity" so that exp(m_old - m_new) never sees inf-inf.
NEG_BIG = -1e30
LOG2E = math.log2(math.e)
MIN_DOT_ROWS = 16


def padded_group(group: int) -> int:
  """Rows of the per-KV-head query tile: a power of two, at least 16."""
  return max(MIN_DOT_ROWS, pl.next_power_of_2(group))


def _repeat_rows(x, rows: int):
  """[n, d] -> [rows, d], row i = x[i % n] (n divides rows)."""
  n, d = x.shape
  if n == rows:
    return x
  return jnp.broadcast_to(x[None], (rows // n, n, d)).reshape(rows, d)


def _first_copy(x, n: int):
  """Inverse of `_repeat_rows` on [rows, ...]: the copies are equal, max returns one."""
  if x.shape[0] == n:
    return x
  return x.reshape((x.shape[0] // n, n) + x.shape[1:]).max(axis=0)


def load_tile(refs, ids, block_k: int, dtype, valid=None):
  """K and V of blocks `ids` as [block_k, head_dim] tiles (8-bit ones in `dtype`), and
  their scales [block_k] (None for a float cache).

  `refs` is (k_ref, v_ref) or (k_ref, v_ref, k_scale_ref, v_scale_ref).
  NOTE: V's scales past `valid` are zeroed (0 x NaN in an unwritten slot would
  poison P V); K's need nothing, their columns are selected away.
  """
  k_ref, v_ref = refs[:2]
  head_dim = k_ref.shape[-1]
  k = k_ref[ids].reshape(block_k, head_dim)
  v = v_ref[ids].reshape(block_k, head_dim)
  if len(refs) == 2:
    return k, v, None, None
  k_scale = refs[2][ids].reshape(block_k)
  v_scale = refs[3][ids].reshape(block_k)
  if valid is not None:
    v_scale = jnp.where(valid, v_scale, 0.0)
  return (quantization.numbers(k).astype(dtype), quantization.numbers(v).astype(dtype),
          k_scale, v_scale)


def _decode_kernel(len_ref, bt_ref, q_ref, *refs, scale, pages_per_step, num_splits, final,
                   rows, quantized):
  """One (row, kv head, split) program; see the module docstring."""
  kv_refs, out_refs = (refs[:4], refs[4:]) if quantized else (refs[:2], refs[2:])
  split = pl.program_id(2)
  _, block_size, head_dim = kv_refs[0].shape
  group = q_ref.shape[0]
  block_k = pages_per_step * block_size
  length = len_ref[0]
  row_pages = pl.cdiv(length, block_size)
  # NOTE: the splits cover pages [0, num_splits * pages_per_split) ⊇ [0, row_pages),
  # and no table entry at or past row_pages is read.
  pages_per_split = heuristics.decode_pages_per_split(row_pages, num_splits, pages_per_step)
  first_page = split * pages_per_split
  end_page = jnp.minimum(row_pages, first_page + pages_per_split)
  num_pages = jnp.maximum(end_page - first_page, 0)
  q = _repeat_rows(q_ref[...], rows)  # [rows, head_dim]
  dtype = q_ref.dtype if quantized else kv_refs[0].dtype
  exact = dtype == jnp.float32

  def body(step, carry):
    acc, m_prev, l_prev = carry
    local = step * pages_per_step + jnp.arange(pages_per_step)
    # NOTE: pages past the sequence's end re-read its last page (masked
    # below), so no block outside the sequence is ever touched.
    local = jnp.minimum(local, num_pages - 1)
    ids = bt_ref[first_page + local]  # [pages_per_step]
    first_token = (first_page + step * pages_per_step) * block_size
    pos = first_token + jnp.arange(block_k)  # [block_k]
    valid = pos < length  # [block_k]
    k, v, k_scale, v_scale = load_tile(kv_refs, ids, block_k, dtype, valid)
    s = plgpu.dot(q.astype(k.dtype), k, trans_b=True, allow_tf32=not exact)
    if quantized:
      s = s * k_scale[None, :]
    s = jnp.where(valid[None, :], s * (scale * LOG2E), NEG_BIG)  # log2 domain
    m_new = jnp.maximum(m_prev, s.max(axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l_new = l_prev * alpha + p.sum(axis=1)
    v = jnp.where(valid[:, None], v, jnp.zeros_like(v))
    if quantized:
      p = p * v_scale[None, :]
    # [rows, head_dim]
    pv = plgpu.dot(p.astype(v.dtype), v, allow_tf32=not exact)
    return acc * alpha[:, None] + pv, m_new, l_new

  acc = jnp.zeros((rows, head_dim), jnp.float32)
  m = jnp.full((rows,), NEG_BIG, jnp.float32)
  l = jnp.zeros((rows,), jnp.float32)
  acc, m, l = lax.fori_loop(
      0, pl.cdiv(num_pages, pages_per_step), body, (acc, m, l)
  )
  _store(out_refs, acc, m, l, group, final)


def _store(out_refs, acc, m, l, group: int, final: bool):
  """Writes a program's result: the normalized output when it is the only split, else the
  partial (acc, m, l) that `combine_splits` merges. acc: [rows, head_dim]; m, l: [rows]."""
  if final:
    (o_ref,) = out_refs  # [group, head_dim]
    inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)
    o_ref[...] = _first_copy(acc * inv[:, None], group).astype(o_ref.dtype)
  else:
    o_ref, m_ref, l_ref = out_refs  # [group, head_dim], [group], [group]
    o_ref[...] = _first_copy(acc, group)
    m_ref[...] = _first_copy(m, group)
    l_ref[...] = _first_copy(l, group)


def combine_splits(acc, m, l):
  """Merges per-split partial softmax results along axis 2.

  m is in the log2 domain (the kernel's exp2-based softmax).

  acc [b, hkv, splits, rows, d], m/l [b, hkv, splits, rows]
  -> [b, hkv, rows, d].
  """
  m_max = m.max(axis=2, keepdims=True)
  w = jnp.exp2(m - m_max) * (l > 0)  # [b, hkv, splits, rows]
  num = (acc * w[..., None]).sum(axis=2)
  den = (l * w).sum(axis=2)
  safe = jnp.where(den > 0, den, 1.0)[..., None]
  return jnp.where(den[..., None] > 0, num / safe, 0.0)


def _q_and_out_specs(q, hkv: int, rows: int, num_splits: int):
  """(q as passed, its BlockSpec, out shapes, out BlockSpecs, tile rows per program).

  A power-of-two group is one block of q [batch, q_heads, d] and of the output;
  any other group is zero-padded to `rows` per KV head (and sliced back after).
  """
  batch, hq, d = q.shape
  group = hq // hkv
  if group & (group - 1) == 0:
    tile, q_in = group, q
    q_spec = pl.BlockSpec((None, group, d), lambda b, h, s: (b, h, 0))
    final_shape, final_spec = (batch, hq, d), q_spec
  else:
    tile = rows
    q_in = jnp.pad(q.reshape(batch, hkv, group, d), ((0, 0), (0, 0), (0, rows - group), (0, 0)))
    q_spec = pl.BlockSpec((None, None, rows, d), lambda b, h, s: (b, h, 0, 0))
    final_shape, final_spec = (batch, hkv, rows, d), q_spec
  if num_splits == 1:
    return q_in, q_spec, [jax.ShapeDtypeStruct(final_shape, q.dtype)], [final_spec], tile
  part = (batch, hkv, num_splits, tile)
  out_shape = [jax.ShapeDtypeStruct(part + (d,), jnp.float32),
               jax.ShapeDtypeStruct(part, jnp.float32),
               jax.ShapeDtypeStruct(part, jnp.float32)]
  row_spec = pl.BlockSpec((None, None, None, tile), lambda b, h, s: (b, h, s, 0))
  acc_spec = pl.BlockSpec((None, None, None, tile, d), lambda b, h, s: (b, h, s, 0, 0))
  return q_in, q_spec, out_shape, [acc_spec, row_spec, row_spec], tile


@functools.partial(
    jax.jit,
    static_argnames=("scale", "num_splits", "pages_per_step", "num_warps",
                     "num_stages", "interpret"),
)
def decode_triton(q, kv_cache, block_tables, lengths, *, scale, num_splits,
                  pages_per_step, num_warps=4, num_stages=2, interpret=False):
  """Runs the kernel; arguments as `paged_decode_attention`, pre-validated."""
  batch, hq, d = q.shape
  hkv = quantization.values_of(kv_cache).shape[1]
  group = hq // hkv
  rows = padded_group(group)
  max_blocks = block_tables.shape[1]
  pages_per_split = pl.cdiv(pl.cdiv(max_blocks, num_splits), pages_per_step)
  pages_per_split *= pages_per_step
  padded_blocks = pages_per_split * num_splits
  tables = jnp.pad(block_tables, ((0, 0), (0, padded_blocks - max_blocks)))
  q_in, q_spec, out_shape, out_specs, tile = _q_and_out_specs(q, hkv, rows, num_splits)
  quantized = quantization.is_quantized(kv_cache)
  kernel = functools.partial(
      _decode_kernel, scale=scale, pages_per_step=pages_per_step,
      num_splits=num_splits, final=num_splits == 1, rows=rows, quantized=quantized)
  kv_specs, kv_args = kv_operands(kv_cache, lambda b, h, s: h)
  outs = pl.pallas_call(
      kernel,
      grid=(batch, hkv, num_splits),
      in_specs=[
          pl.BlockSpec((None, 1), lambda b, h, s: (b, 0)),  # lengths
          pl.BlockSpec((None, padded_blocks), lambda b, h, s: (b, 0)),  # tables
          q_spec,  # the q heads of kv head h: [tile, d]
          *kv_specs,  # K, V of kv head h: [num_blocks, block_size, d] (and their scales)
      ],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                           num_stages=num_stages),
      interpret=interpret,
      name="paged_decode_triton",
  )(lengths.reshape(batch, 1), tables, q_in, *kv_args)
  o = outs[0] if num_splits == 1 else combine_splits(*outs)   # [.., tile, d] or [b, hq, d]
  if tile != group:
    o = o.reshape(batch, hkv, tile, d)[:, :, :group, :]
  return o.reshape(batch, hq, d).astype(q.dtype)


def kv_operands(kv_cache, head_of) -> tuple[list, list]:
  """BlockSpecs and operands of one KV head's K and V (and their scales) for a grid whose
  KV head is `head_of(*program ids)`: K [num_blocks, block_size, d], V the same, then, for
  a quantized cache, K's and V's scales [num_blocks, block_size]."""
  values = quantization.values_of(kv_cache)
  num_blocks, _, _, block_size, d = values.shape
  specs = [pl.BlockSpec((num_blocks, None, None, block_size, d),
                        lambda *ids, w=which: (0, head_of(*ids), w, 0, 0)) for which in (0, 1)]
  args = [values, values]
  if quantization.is_quantized(kv_cache):
    specs += [pl.BlockSpec((num_blocks, None, None, block_size),
                           lambda *ids, w=which: (0, head_of(*ids), w, 0)) for which in (0, 1)]
    args += [kv_cache.scales, kv_cache.scales]
  return specs, args
