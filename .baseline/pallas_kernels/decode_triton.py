"""Paged decode attention as a Pallas kernel lowered through Triton.

Grid: (batch, num_kv_heads, num_splits). One program handles all query heads
of one KV head for one split of one row's pages. The QK^T and PV products run
on tensor cores, which need 16 rows: a power-of-two group is read straight
from q [batch, q_heads, d] and repeated to 16 rows inside the kernel (the
copies compute the same values; one is written back, straight into the
output's [batch, q_heads, d]); any other group is zero-padded outside. It walks its
pages `pages_per_step` blocks at a time; each block's K (and V) is one
contiguous [block_size, head_dim] tile of the cache. Online softmax in
float32. With one split the kernel normalises and writes the output itself;
with several it writes (acc, max, sum) and `combine_splits` merges them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

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


def _decode_kernel(len_ref, bt_ref, q_ref, k_ref, v_ref, *out_refs, scale,
                   pages_per_step, pages_per_split, final, rows):
  """One (row, kv head, split) program; see the module docstring."""
  split = pl.program_id(2)
  _, block_size, head_dim = k_ref.shape
  group = q_ref.shape[0]
  block_k = pages_per_step * block_size
  length = len_ref[0]
  first_page = split * pages_per_split
  end_page = jnp.minimum(pl.cdiv(length, block_size),
                         first_page + pages_per_split)
  num_pages = jnp.maximum(end_page - first_page, 0)
  q = _repeat_rows(q_ref[...], rows)  # [rows, head_dim]
  exact = k_ref.dtype == jnp.float32

  def body(step, carry):
    acc, m_prev, l_prev = carry
    local = step * pages_per_step + jnp.arange(pages_per_step)
    # NOTE: pages past the sequence's end re-read its last page (masked
    # below), so no block outside the sequence is ever touched.
    local = jnp.minimum(local, num_pages - 1)
    ids = bt_ref[first_page + local]  # [pages_per_step]
    k = k_ref[ids].reshape(block_k, head_dim)
    v = v_ref[ids].reshape(block_k, head_dim)
    first_token = (first_page + step * pages_per_step) * block_size
    pos = first_token + jnp.arange(block_k)  # [block_k]
    valid = pos < length  # [block_k]
    s = plgpu.dot(q.astype(k.dtype), k, trans_b=True, allow_tf32=not exact)
    s = jnp.where(valid[None, :], s * (scale * LOG2E), NEG_BIG)  # log2 domain
    m_new = jnp.maximum(m_prev, s.max(axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    v = jnp.where(valid[:, None], v, jnp.zeros_like(v))
    # [rows, head_dim]
    pv = plgpu.dot(p.astype(v.dtype), v, allow_tf32=not exact)
    return acc * alpha[:, None] + pv, m_new, l_prev * alpha + p.sum(axis=1)

  acc = jnp.zeros((rows, head_dim), jnp.float32)
  m = jnp.full((rows,), NEG_BIG, jnp.float32)
  l = jnp.zeros((rows,), jnp.float32)
  acc, m, l = lax.fori_loop(
      0, pl.cdiv(num_pages, pages_per_step), body, (acc, m, l)
  )
  if final:
    (o_ref,) = out_refs
    inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)
    o_ref[...] = _first_copy(acc * inv[:, None], group).astype(o_ref.dtype)
  else:
    o_ref, m_ref, l_ref = out_refs
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
  num_blocks, hkv, _, block_size, _ = kv_cache.shape
  group = hq // hkv
  rows = padded_group(group)
  max_blocks = block_tables.shape[1]
  pages_per_split = pl.cdiv(pl.cdiv(max_blocks, num_splits), pages_per_step)
  pages_per_split *= pages_per_step
  padded_blocks = pages_per_split * num_splits
  tables = jnp.pad(block_tables, ((0, 0), (0, padded_blocks - max_blocks)))
  q_in, q_spec, out_shape, out_specs, tile = _q_and_out_specs(q, hkv, rows, num_splits)
  kernel = functools.partial(
      _decode_kernel, scale=scale, pages_per_step=pages_per_step,
      pages_per_split=pages_per_split, final=num_splits == 1, rows=rows)
  kv_spec = lambda which: pl.BlockSpec(
      (num_blocks, None, None, block_size, d),
      lambda b, h, s: (0, h, which, 0, 0))
  outs = pl.pallas_call(
      kernel,
      grid=(batch, hkv, num_splits),
      in_specs=[
          pl.BlockSpec((None, 1), lambda b, h, s: (b, 0)),  # lengths
          pl.BlockSpec((None, padded_blocks), lambda b, h, s: (b, 0)),  # tables
          q_spec,  # the q heads of kv head h: [tile, d]
          kv_spec(0),  # K of kv head h: [num_blocks, block_size, d]
          kv_spec(1),  # V
      ],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                           num_stages=num_stages),
      interpret=interpret,
      name="paged_decode_triton",
  )(lengths.reshape(batch, 1), tables, q_in, kv_cache, kv_cache)
  o = outs[0] if num_splits == 1 else combine_splits(*outs)   # [.., tile, d] or [b, hq, d]
  if tile != group:
    o = o.reshape(batch, hkv, tile, d)[:, :, :group, :]
  return o.reshape(batch, hq, d).astype(q.dtype)
