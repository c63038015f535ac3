"""Paged prefill attention as a Pallas kernel lowered through Triton.

Grid: (num_tiles, num_kv_heads). A tile is up to `block_q` consecutive new
tokens of one sequence (see prefill_tiles.py). The query heads of one KV head
are folded into the tile's rows (row r = token r // group_pad, head
r % group_pad), so each K/V block is loaded once per KV head and tile. The
program walks the sequence's cache from position 0 up to the tile's last
token: first the chunks entirely below the causal diagonal without masks,
then the diagonal chunks with the causal mask. Online softmax in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels import prefill_tiles

NEG_BIG = -1e30
LOG2E = math.log2(math.e)


def _prefill_kernel(rows_ref, pos_ref, kvlen_ref, seq_ref, bt_ref, q_ref,
                    k_ref, v_ref, o_ref, *, scale, group_pad, pages_per_step,
                    max_blocks):
  """One (tile, kv head) program; see the module docstring."""
  _, block_size, head_dim = k_ref.shape
  num_rows = q_ref.shape[0]
  block_k = pages_per_step * block_size
  tokens = rows_ref[0]
  first_pos = pos_ref[0]
  # Cache positions [0, end) are visible to some row of this tile.
  end = jnp.where(tokens > 0, jnp.minimum(kvlen_ref[0], first_pos + tokens), 0)
  num_pages = pl.cdiv(end, block_size)
  table_base = seq_ref[0] * max_blocks
  row_pos = first_pos + jnp.arange(num_rows) // group_pad  # [num_rows]
  q = q_ref[...]  # [num_rows, head_dim]
  exact = k_ref.dtype == jnp.float32

  def body(step, carry, masked):
    acc, m_prev, l_prev = carry
    local = step * pages_per_step + jnp.arange(pages_per_step)
    ids = bt_ref[table_base + jnp.minimum(local, num_pages - 1)]
    k = k_ref[ids].reshape(block_k, head_dim)
    v = v_ref[ids].reshape(block_k, head_dim)
    s = plgpu.dot(q.astype(k.dtype), k, trans_b=True, allow_tf32=not exact)
    s = s * (scale * LOG2E)  # [num_rows, block_k], log2 domain
    if masked:
      pos = step * block_k + jnp.arange(block_k)  # [block_k]
      ok = (pos[None, :] <= row_pos[:, None]) & (pos[None, :] < end)
      s = jnp.where(ok, s, NEG_BIG)
      v = jnp.where((pos < end)[:, None], v, jnp.zeros_like(v))
    m_new = jnp.maximum(m_prev, s.max(axis=1))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, None])
    pv = plgpu.dot(p.astype(v.dtype), v, allow_tf32=not exact)
    return acc * alpha[:, None] + pv, m_new, l_prev * alpha + p.sum(axis=1)

  carry = (jnp.zeros((num_rows, head_dim), jnp.float32),
           jnp.full((num_rows,), NEG_BIG, jnp.float32),
           jnp.zeros((num_rows,), jnp.float32))
  # NOTE: chunks ending at or before first_pos + 1 are fully visible to every
  # row of the tile and never pass `end`, so they need no mask.
  num_full = jnp.where(tokens > 0, (first_pos + 1) // block_k, 0)
  num_all = pl.cdiv(end, block_k)
  carry = lax.fori_loop(0, num_full, functools.partial(body, masked=False),
                        carry)
  acc, _, l = lax.fori_loop(num_full, num_all,
                            functools.partial(body, masked=True), carry)
  inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)
  o_ref[...] = (acc * inv[:, None]).astype(o_ref.dtype)


@functools.partial(
    jax.jit,
    static_argnames=("scale", "block_q", "pages_per_step", "num_warps",
                     "num_stages", "interpret"),
)
def prefill_triton(q, kv_cache, block_tables, cu_q_lens, kv_lens, *, scale,
                   block_q, pages_per_step, num_warps=8, num_stages=2,
                   interpret=False):
  """Runs the kernel; arguments as `paged_prefill_attention`, pre-validated."""
  num_tokens, hq, d = q.shape
  num_blocks, hkv, _, block_size, _ = kv_cache.shape
  group = hq // hkv
  group_pad = pl.next_power_of_2(group)
  num_rows = block_q * group_pad
  num_seqs, max_blocks = block_tables.shape
  tiles = prefill_tiles.make_tiles(cu_q_lens, kv_lens, num_tokens, block_q)
  n_tiles = tiles.seq.shape[0]
  qg = q.reshape(num_tokens, hkv, group, d)
  qg = jnp.pad(qg, ((0, 0), (0, 0), (0, group_pad - group), (0, 0)))
  qt = prefill_tiles.gather_tiles(qg, tiles, block_q)  # [tiles, bq, hkv, gp, d]
  qt = qt.transpose(0, 2, 1, 3, 4).reshape(n_tiles, hkv, num_rows, d)
  kernel = functools.partial(
      _prefill_kernel, scale=scale, group_pad=group_pad,
      pages_per_step=pages_per_step, max_blocks=max_blocks)
  # NOTE: programs visit tiles last-first: later tiles of a sequence see more
  # context, and starting the longest programs first shortens the tail.
  rev = lambda t: n_tiles - 1 - t
  scalar = pl.BlockSpec((1,), lambda t, h: (rev(t),))
  kv_spec = lambda which: pl.BlockSpec(
      (num_blocks, None, None, block_size, d), lambda t, h: (0, h, which, 0, 0))
  tile_spec = pl.BlockSpec((None, None, num_rows, d),
                           lambda t, h: (rev(t), h, 0, 0))
  out = pl.pallas_call(
      kernel,
      grid=(n_tiles, hkv),
      in_specs=[scalar, scalar, scalar, scalar,
                pl.BlockSpec((num_seqs * max_blocks,), lambda t, h: (0,)),
                tile_spec, kv_spec(0), kv_spec(1)],
      out_specs=tile_spec,
      out_shape=jax.ShapeDtypeStruct((n_tiles, hkv, num_rows, d), q.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                           num_stages=num_stages),
      interpret=interpret,
      name="paged_prefill_triton",
  )(tiles.rows, tiles.first_pos, tiles.kv_len, tiles.seq,
    block_tables.reshape(-1), qt, kv_cache, kv_cache)
  out = out.reshape(n_tiles, hkv, block_q, group_pad, d)
  out = out.transpose(0, 2, 1, 3, 4)  # [tiles, bq, hkv, gp, d]
  out = prefill_tiles.scatter_tiles(out, tiles, num_tokens)  # [T, hkv, gp, d]
  return out[:, :, :group, :].reshape(num_tokens, hq, d)
