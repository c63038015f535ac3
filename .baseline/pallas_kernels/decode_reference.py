"""Pure-jnp paged decode attention: the correctness oracle and the CPU path."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import validation


# NOTE: float32 math in full precision (XLA on GPU would otherwise use TF32).
HIGHEST = lax.Precision.HIGHEST


def gather_sequence_kv(
    kv_cache: jax.Array, block_table: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Gathers one sequence's K and V as dense [context, kv_heads, head_dim].

  `block_table` is [max_blocks]; context = max_blocks * block_size.
  """
  blocks = kv_cache[block_table]  # [max_blocks, kv_heads, 2, bs, head_dim]
  mb, hkv, _, bs, d = blocks.shape
  blocks = blocks.transpose(2, 0, 3, 1, 4)  # [2, max_blocks, bs, kv_heads, d]
  blocks = blocks.reshape(2, mb * bs, hkv, d)
  return blocks[0], blocks[1]


def masked_softmax(s: jax.Array, mask: jax.Array) -> jax.Array:
  """Float32 softmax over the last axis of `s` where `mask`; all-masked rows give zeros."""
  s = jnp.where(mask, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom > 0, denom, 1.0)


def _decode_row(q, kv_cache, block_table, length, scale):
  """Attention of one row's query heads over its `length` cached tokens."""
  k, v = gather_sequence_kv(kv_cache, block_table)  # [ctx, hkv, d] each
  ctx, hkv, d = k.shape
  hq = q.shape[0]
  valid = jnp.arange(ctx) < length  # [ctx]
  # NOTE: zero out tokens past `length` so NaN/garbage in unused slots or
  # blocks cannot leak through 0 * NaN.
  k = jnp.where(valid[:, None, None], k, 0).astype(jnp.float32)
  v = jnp.where(valid[:, None, None], v, 0).astype(jnp.float32)
  qg = q.astype(jnp.float32).reshape(hkv, hq // hkv, d)  # [hkv, group, d]
  # [hkv, group, ctx]
  s = jnp.einsum("kgd,tkd->kgt", qg, k, precision=HIGHEST) * scale
  p = masked_softmax(s, valid[None, None, :])
  o = jnp.einsum("kgt,tkd->kgd", p, v, precision=HIGHEST)
  return o.reshape(hq, d)


@functools.partial(jax.jit, static_argnames=("scale",))
def _decode_reference(q, kv_cache, block_tables, lengths, scale):
  out = jax.vmap(_decode_row, in_axes=(0, None, 0, 0, None))(
      q, kv_cache, block_tables, lengths, scale
  )  # [batch, hq, d]
  return out.astype(q.dtype)


def paged_decode_attention_reference(
    q: jax.Array,
    kv_cache: jax.Array,
    block_tables: jax.Array,
    lengths: jax.Array,
    *,
    scale: float | None = None,
) -> jax.Array:
  """Decode attention of one new token per row over its paged KV cache.

  Args:
    q: [batch, num_q_heads, head_dim] queries.
    kv_cache: [num_blocks, num_kv_heads, 2, block_size, head_dim].
    block_tables: int32 [batch, max_blocks_per_seq].
    lengths: int32 [batch], cached tokens including the current one; 0 marks
      a padding row, whose output is zeros.
    scale: softmax scale, default head_dim ** -0.5.

  Returns:
    [batch, num_q_heads, head_dim] in q's dtype.
  """
  validation.check_decode_args(q, kv_cache, block_tables, lengths)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  return _decode_reference(q, kv_cache, block_tables, lengths, float(scale))
