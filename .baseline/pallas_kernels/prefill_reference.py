"""Pure-jnp paged prefill attention: the correctness oracle and the CPU path.

Tokens of several sequences are packed along axis 0 of q. The reference walks
the sequences with `lax.fori_loop`; each step attends a window of the packed
queries starting at that sequence's first token to the sequence's gathered
context, and writes only that sequence's rows back. Memory per step is
O(num_tokens * context), never a per-token gather of the context.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels import validation
from pallas_kernels.decode_reference import gather_sequence_kv, masked_softmax


# NOTE: float32 math in full precision (XLA on GPU would otherwise use TF32).
HIGHEST = lax.Precision.HIGHEST


def _attend_sequence(q_win, k, v, q_len, kv_len, scale):
  """Causal attention of a query window to one sequence's context.

  q_win: [t, hq, d] float32 whose first q_len rows are this sequence's tokens.
  k, v: [ctx, hkv, d]. Row i sits at position kv_len - q_len + i.
  Returns [t, hq, d] float32 (rows >= q_len are meaningless).
  """
  t, hq, d = q_win.shape
  ctx, hkv, _ = k.shape
  kv_valid = jnp.arange(ctx) < kv_len  # [ctx]
  k = jnp.where(kv_valid[:, None, None], k, 0).astype(jnp.float32)
  v = jnp.where(kv_valid[:, None, None], v, 0).astype(jnp.float32)
  q_pos = kv_len - q_len + jnp.arange(t)  # [t]
  allowed = jnp.arange(ctx)[None, :] <= q_pos[:, None]  # [t, ctx]
  allowed &= kv_valid[None, :]
  qg = q_win.reshape(t, hkv, hq // hkv, d)
  # [t, hkv, group, ctx]
  s = jnp.einsum("tkgd,ckd->tkgc", qg, k, precision=HIGHEST) * scale
  p = masked_softmax(s, allowed[:, None, None, :])
  o = jnp.einsum("tkgc,ckd->tkgd", p, v, precision=HIGHEST)
  return o.reshape(t, hq, d)


@functools.partial(jax.jit, static_argnames=("scale",))
def _prefill_reference(q, kv_cache, block_tables, cu_q_lens, kv_lens, scale):
  t, hq, d = q.shape
  num_seqs = block_tables.shape[0]
  q32 = jnp.concatenate([q.astype(jnp.float32), jnp.zeros_like(q, jnp.float32)])
  out = jnp.zeros((2 * t, hq, d), jnp.float32)  # [2t, hq, d], padded window

  def body(s, out):
    start = cu_q_lens[s]
    q_len = cu_q_lens[s + 1] - start
    q_win = lax.dynamic_slice_in_dim(q32, start, t)  # [t, hq, d]
    k, v = gather_sequence_kv(kv_cache, block_tables[s])
    o = _attend_sequence(q_win, k, v, q_len, kv_lens[s], scale)
    old = lax.dynamic_slice_in_dim(out, start, t)
    rows = (jnp.arange(t) < q_len)[:, None, None]
    new = jnp.where(rows, o, old)
    return lax.dynamic_update_slice_in_dim(out, new, start, 0)

  # NOTE: the loop stops after the last sequence with tokens: the engine pads the
  # sequence axis with empty sequences, which would each cost a full window.
  q_lens = cu_q_lens[1:] - cu_q_lens[:-1]                   # [num_seqs]
  num_active = jnp.max(jnp.where(q_lens > 0, jnp.arange(1, num_seqs + 1), 0))
  out = lax.fori_loop(0, num_active, body, out)
  return out[:t].astype(q.dtype)


def paged_prefill_attention_reference(
    q: jax.Array,
    kv_cache: jax.Array,
    block_tables: jax.Array,
    cu_q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float | None = None,
) -> jax.Array:
  """Causal attention of packed new tokens to their sequences' paged cache.

  Args:
    q: [num_tokens, num_q_heads, head_dim]; sequences packed back to back,
      then padding up to num_tokens (padding rows output zeros).
    kv_cache: [num_blocks, num_kv_heads, 2, block_size, head_dim], already
      holding this chunk's K/V.
    block_tables: int32 [num_seqs, max_blocks_per_seq].
    cu_q_lens: int32 [num_seqs + 1] cumulative query lengths, starting at 0.
    kv_lens: int32 [num_seqs] cached tokens per sequence including this chunk.
    scale: softmax scale, default head_dim ** -0.5.

  Returns:
    [num_tokens, num_q_heads, head_dim] in q's dtype.
  """
  validation.check_prefill_args(q, kv_cache, block_tables, cu_q_lens, kv_lens)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  return _prefill_reference(
      q, kv_cache, block_tables, cu_q_lens, kv_lens, float(scale)
  )
