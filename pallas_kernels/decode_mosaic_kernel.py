"""The Mosaic GPU (Hopper) paged decode kernel body: one CTA per (row, KV head,
split).

The prefill kernel's pipeline with one compute warpgroup: the memory
warpgroup (prefill_mosaic_memory.producer) TMAs the split's cache tokens,
one copy per KV block, into `stages` K/V buffers; the compute warpgroup runs
prefill_mosaic_kernel.attention_step on them (wgmma S = Q Kᵀ, exp2 online
softmax, wgmma O += P V). wgmma's M is 64 rows, so the GQA group's query
heads (one TMA box of `q_rows`, a multiple of 8) are the first rows of a
64-row Q tile; the other rows are never initialised and never stored (rows
are independent in every operation). Decode is bound by reading K/V, which
TMA streams without the register traffic of the Triton kernel's loads.

A row's cache tokens are cut into `num_splits` runs of whole steps
(`Span`); with one split the CTA writes the normalised output, else the
normalised partial output and its log2-sum-exp, merged by
decode_mosaic.combine_splits.

NOTE: slots at or past a row's length may hold anything (NaN in the tests).
Only the split that ends at the length reads them, on its last step: that
step masks the scores, and the producer zeroes those V rows (`dirty_tail`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import prefill_mosaic_kernel as attn
from pallas_kernels.prefill_mosaic_kernel import NEG_BIG
from pallas_kernels.prefill_mosaic_kernel import ROWS_PER_WG


@dataclasses.dataclass(frozen=True)
class Static:
  """Compile-time facts of the decode kernel body."""
  block_kv: int  # cache tokens per pipeline step: 64, 128 or 256
  stages: int  # K/V buffers in flight
  num_splits: int  # CTAs per (row, KV head)
  q_rows: int  # GQA group rounded up to a multiple of 8 (the Q/O box)
  p_in_regs: bool  # as prefill_mosaic_kernel.Static (False in interpret mode)
  max_blocks: int  # block-table row length
  scale: float  # softmax scale
  qk_8bit: bool = False  # DecodeMosaicConfig's (8-bit caches only)
  v_converters: int = 1
  streams: int = 1
  ctas: int = 0
  issuers: int = 1
  dynamic: bool = False


def _cdiv(a, b: int):
  return lax.div(a + (b - 1), b)  # NOTE: a >= 0


class Span:
  """The cache tokens one CTA attends to: [first_kv, end) of its row.

  Has the attributes prefill_mosaic_memory.producer reads from a tile.
  """

  def __init__(self, len_ref, cfg: Static, block_size: int, stream: int = 0,
               item=None):
    # item: (row, KV-head group, split), else the CTA's grid position
    row, group, split = item or [lax.axis_index(a) for a in ("row", "head", "split")]
    self.row, self.split = row, split
    # NOTE: with cfg.streams KV heads per CTA, stream s is head streams * h + s.
    self.head = group * cfg.streams + stream
    length = len_ref[self.row]  # len_ref int32 [batch] (GMEM)
    # NOTE: whole steps per split, so only the last non-empty split can end
    # inside a step; splits past the row's end have no steps.
    per_split = _cdiv(_cdiv(length, cfg.num_splits), cfg.block_kv) * cfg.block_kv
    self.first_kv = split * per_split
    self.end = jnp.minimum(length, self.first_kv + per_split)
    tokens = jnp.maximum(self.end - self.first_kv, 0)
    self.num_steps = _cdiv(tokens, cfg.block_kv)
    self.num_full = lax.div(tokens, cfg.block_kv)  # steps needing no mask
    self.last_page = jnp.maximum(_cdiv(length, block_size) - 1, 0)
    # A step past the length re-reads slots of the row's last block; only a
    # partial last block has slots that were never written.
    self.dirty_tail = ((self.first_kv + self.num_steps * cfg.block_kv > length)
                       & (lax.rem(length, block_size) != 0))
    self.table_base = self.row * cfg.max_blocks


def _length_mask(s, step, *, span: Span, cfg: Static):
  """s [64, block_kv] with keys at or past the span's end set to NEG_BIG."""
  key = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
  return jnp.where(key + (span.first_kv + step * cfg.block_kv) < span.end, s,
                   NEG_BIG)


def consumer(span: Span, q_ref, out_refs, bufs, bars, cfg: Static):
  """The compute warpgroup: attention of the Q tile over the span's steps."""
  plgpu.set_max_registers(attn.compute_registers(1), action="increase")
  qo, p_smem, part_smem, lse_smem, k_smem, v_smem = bufs
  # qo [64, d] (q dtype), p_smem [64, block_kv] or None, part_smem [64, d]
  # f32 and lse_smem [64] f32 (split partials) or None; k/v_smem [stages,
  # block_kv, d] (all SMEM)
  rows = pl.ds(0, cfg.q_rows)
  # q_ref [batch, hkv, q_rows, d] (GMEM)
  plgpu.copy_gmem_to_smem(q_ref.at[span.row, span.head], qo.at[rows], bars["q"])
  plgpu.barrier_wait(bars["q"])
  step = functools.partial(
      attn.attention_step, qo=qo, p_smem=p_smem, k_smem=k_smem, v_smem=v_smem,
      bars=bars, cfg=cfg, sched=None)
  carry = lax.fori_loop(0, span.num_full, functools.partial(step, mask=None),
                        attn.initial_carry(qo))
  mask = functools.partial(_length_mask, span=span, cfg=cfg)
  acc, m, l = lax.fori_loop(span.num_full, span.num_steps,
                            functools.partial(step, mask=mask), carry)
  inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)  # empty: zeros
  out = acc * lax.broadcast_in_dim(inv, acc.shape, [0])
  if part_smem is None:  # o_ref [batch, hkv, q_rows, d] (GMEM)
    (o_ref,) = out_refs
    qo[...] = out.astype(qo.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(qo.at[rows], o_ref.at[span.row, span.head])
  else:  # o_ref [batch, hkv, splits, q_rows, d], lse_ref [.., splits, 64]
    o_ref, lse_ref = out_refs
    split = lax.axis_index("split")
    part_smem[...] = out
    lse_smem[...] = jnp.where(l > 0, m + jnp.log2(jnp.where(l > 0, l, 1.0)),
                              NEG_BIG)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(part_smem.at[rows],
                            o_ref.at[span.row, span.head, split])
    plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[span.row, span.head, split])
  plgpu.wait_smem_to_gmem(0)


def buffers(cfg: Static, head_dim: int, dtype, smem) -> list:
  """The shared-memory buffers of `consumer`'s bufs, then K and V stages;
  `smem(shape, dtype)` makes one in the swizzled tiling."""
  split = cfg.num_splits > 1
  return [
      smem((ROWS_PER_WG, head_dim), dtype),  # Q, then O
      None if cfg.p_in_regs else smem((ROWS_PER_WG, cfg.block_kv), dtype),
      smem((ROWS_PER_WG, head_dim), jnp.float32) if split else None,
      plgpu.SMEM((ROWS_PER_WG,), jnp.float32) if split else None,
      smem((cfg.stages, cfg.block_kv, head_dim), dtype),  # K stages
      smem((cfg.stages, cfg.block_kv, head_dim), dtype),  # V stages
  ]
