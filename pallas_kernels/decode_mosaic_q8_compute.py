"""The compute warpgroup of the 8-bit Mosaic decode, transposed: Sᵀ = K Qᵀ.

Decode's query tile is a KV head's GQA group (3-8 heads in the models we
serve). As wgmma's M (64 rows a warpgroup) it makes every step's softmax 64
rows of which the group is a few; on the H200 that bound the 8-bit kernel
(docs/benchmarks.md). Here the keys are M and the group is N, padded to
`q_cols` (16, 32 or 64: the P stage's rows must be >= 32 bytes, wgmma has no
16-byte swizzle):

  Sᵀ [block_kv, N] = K [block_kv, d] · Qᵀ        (A: K stage, B: Q tile)
  Oᵀ [d, N]       += Vᵀ [d, block_kv] · Pᵀ        (A: V stage transposed,
                                                   B: Pᵀ through SMEM)

K is read from the 8-bit ring itself: 64 rows at a time are loaded into
registers, converted to bf16 there and given to wgmma as a register A
operand (no 16-bit K stage, no K converter warpgroup). V goes through the V
converter's bf16 stages (wgmma's A must be in the WGMMA layout, and a
transposed 8-bit load has no relayout to it).

K's per-key scales multiply Sᵀ's rows, V's multiply Pᵀ's rows before P V.
Each step takes one cross-warp max over the keys; the row sums stay
elementwise over the steps ([block_kv, N], reduced once at the end). K's
rows past a row's end are not zeroed: the masked step replaces their Sᵀ
rows (NaN from poisoned slots included) before anything reads them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.prefill_mosaic_kernel import LOG2E
from pallas_kernels.prefill_mosaic_kernel import NEG_BIG

from pallas_kernels import quantization

LAYOUT = plgpu.Layout.WGMMA
# NOTE: 8-bit chunks (K here, V in the converter) are loaded in LAYOUT, 2
# bytes a thread-vector: WGMMA_UPCAST_2X's 4-byte loads and a shuffle to
# LAYOUT after the conversion were slower on the H200 (e4m3 at 64 x 4096: 243
# vs 216 µs; docs/benchmarks.md, 2026-12-03).
CHUNK_ROWS = 64  # K rows per register chunk (a WGMMA layout tile's M)
COLS = LAYOUT.reduce(0)  # a value per query column
KEYS = LAYOUT.reduce(1)  # a value per key row
COMPUTE_REGISTERS = 256


def q_cols(group: int) -> int:
  """The query tile's columns: the group rounded up to 16, 32 or 64."""
  return next(n for n in (16, 32, 64) if group <= n)


@dataclasses.dataclass(frozen=True)
class Bufs:
  """The compute warpgroup's shared memory (the `smem` tiling throughout):
  q [N, d] bf16; p [N, block_kv] bf16 (P, written as Pᵀ through a
  transposed view: wgmma takes one swizzle for both operands); out [d, N] (Oᵀ: q's dtype with
  one split, else float32); lse [N] f32 or None; k [stages, block_kv, d]
  8-bit (the ring's); v [STAGES16, block_kv, d] bf16; k_scales, v_scales
  [stages, block_kv] f32 (the ring's); k_tile [block_kv, d] bf16 in
  interpret mode only, else None (see _k_chunk)."""
  q: object
  p: object
  out: object
  lse: object
  k: object
  v: object
  k_scales: object
  v_scales: object
  k_tile: object = None


def buffers(cfg, head_dim: int, cols: int, smem) -> list:
  """q, p, out, lse of Bufs (k, v and the scales are allocated beside)."""
  split = cfg.num_splits > 1
  return [smem((cols, head_dim), jnp.bfloat16),
          smem((cols, cfg.block_kv), jnp.bfloat16),
          smem((head_dim, cols), jnp.float32 if split else jnp.bfloat16),
          plgpu.SMEM((cols,), jnp.float32) if split else None]


def consumer(span, q_ref, out_refs, bufs: Bufs, bars, cfg, stages16: int):
  """Attention of the group over the span's steps. q_ref [batch, hkv, N, d]
  (GMEM); out_refs: (oᵀ [batch, hkv, d, N],) or (partials [.., splits, d, N]
  f32, lse [.., splits, N] f32)."""
  plgpu.set_max_registers(COMPUTE_REGISTERS, action="increase")
  plgpu.copy_gmem_to_smem(q_ref.at[span.row, span.head], bufs.q, bars["q"])
  plgpu.barrier_wait(bars["q"])
  cols, head_dim = bufs.q.shape
  carry = (plgpu.layout_cast(jnp.zeros((head_dim, cols), jnp.float32), LAYOUT),
           plgpu.layout_cast(jnp.full((cols,), NEG_BIG, jnp.float32), COLS),
           plgpu.layout_cast(jnp.zeros((cfg.block_kv, cols), jnp.float32), LAYOUT))
  step = lambda masked: lambda i, c: _step(i, c, span, bufs, bars, cfg,
                                           stages16, masked)
  carry = lax.fori_loop(0, span.num_full, step(False), carry)
  acc, m, sums = lax.fori_loop(span.num_full, span.num_steps, step(True), carry)
  l = sums.sum(axis=0)
  inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)  # empty: zeros
  bufs.out[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [1])).astype(
      bufs.out.dtype)
  dst = (span.row, span.head)
  if bufs.lse is not None:
    dst += (lax.axis_index("split"),)
    bufs.lse[...] = jnp.where(l > 0, m + jnp.log2(jnp.where(l > 0, l, 1.0)),
                              NEG_BIG)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(bufs.out, out_refs[0].at[dst])
  if bufs.lse is not None:
    plgpu.copy_smem_to_gmem(bufs.lse, out_refs[1].at[dst])
  plgpu.wait_smem_to_gmem(0)


def _step(step, carry, span, bufs: Bufs, bars, cfg, stages16: int, masked):
  """One step: Sᵀ, scales and mask, online softmax over the keys, Oᵀ += Vᵀ Pᵀ."""
  acc, m_prev, sums = carry  # [d, N] f32, [N] f32, [block_kv, N] f32
  slot, ring = lax.rem(step, stages16), lax.rem(step, cfg.stages)
  with jax.named_scope("wait_k"):
    plgpu.barrier_wait(bars["k8_ready"].at[ring])

  def qk(acc_ref):  # acc_ref [block_kv, N] f32
    chunks = [pl.ds(r0, CHUNK_ROWS) for r0 in range(0, cfg.block_kv, CHUNK_ROWS)]
    ks = [_k_chunk(bufs, ring, rows) for rows in chunks]  # all before any wgmma
    for rows, k in zip(chunks, ks):
      plgpu.wgmma(acc_ref.at[rows], k, bufs.q.transpose((1, 0)))
    return acc_ref[...]

  with jax.named_scope("qk"):
    s = pl.run_scoped(qk, plgpu.ACC((cfg.block_kv, bufs.q.shape[0]), jnp.float32))
    plgpu.barrier_arrive(bars["k8_free"].at[ring])
  with jax.named_scope("softmax"):
    k_scale = plgpu.load(bufs.k_scales.at[ring], layout=KEYS)
    s = s * lax.broadcast_in_dim(k_scale * (cfg.scale * LOG2E), s.shape, [0])
    if masked:
      key = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=LAYOUT)
      s = jnp.where(key + (span.first_kv + step * cfg.block_kv) < span.end, s,
                    NEG_BIG)
    p, (acc, m_new, sums) = _online_softmax(s, (acc, m_prev, sums))
  with jax.named_scope("wait_v"):
    plgpu.barrier_wait(bars["v_ready"].at[slot])
  with jax.named_scope("p_store"):
    v_scale = plgpu.load(bufs.v_scales.at[ring], layout=KEYS)
    p_t = bufs.p.transpose((1, 0))  # [block_kv, N], stored transposed
    p_t[...] = (p * lax.broadcast_in_dim(v_scale, p.shape, [0])).astype(
        bufs.p.dtype)
    plgpu.commit_smem()

  def pv(acc_ref):  # acc_ref [d, N] f32, starts at zero
    plgpu.wgmma(acc_ref, bufs.v.at[slot].transpose((1, 0)), p_t)
    return acc_ref[...]

  # NOTE: a fresh accumulator added to acc, not one initialised from it:
  # interpret mode cannot run the latter (and this one is 16 adds a thread).
  with jax.named_scope("pv"):
    acc = acc + pl.run_scoped(pv, plgpu.ACC(acc.shape, jnp.float32))
    plgpu.barrier_arrive(bars["v_free"].at[slot])
    plgpu.barrier_arrive(bars["s_free"].at[ring])
  return acc, m_new, sums


def _online_softmax(s, carry):
  """Pᵀ = exp2(Sᵀ - max) [block_kv, N] f32 and the carry (acc [d, N], m [N],
  sums [block_kv, N]) rescaled to the new max over the step's keys."""
  acc, m_prev, sums = carry
  m_new = jnp.maximum(m_prev, s.max(axis=0))
  alpha = jnp.exp2(m_prev - m_new)
  p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [1]))
  sums = sums * lax.broadcast_in_dim(alpha, s.shape, [1]) + p
  return p, (acc * lax.broadcast_in_dim(alpha, acc.shape, [1]), m_new, sums)


def _k_chunk(bufs: Bufs, ring, rows):
  """K's `rows` of 8-bit ring stage `ring` as bf16 in registers (wgmma's
  LAYOUT), or, in interpret mode, through bufs.k_tile.

  NOTE: Mosaic GPU's interpreter takes wgmma operands from shared memory
  only; there the converted chunk is stored to k_tile first (the same
  numbers: the conversion is exact either way).
  """
  k = to_bf16(plgpu.load(bufs.k.at[ring].at[rows], layout=LAYOUT))
  if bufs.k_tile is None:
    return k
  bufs.k_tile.at[rows][...] = k
  plgpu.commit_smem()
  return bufs.k_tile.at[rows]


def to_bf16(x):
  """8-bit stored values (int8, or e4m3 bits in uint8) as bf16, exactly."""
  number = quantization.format_of(x.dtype).number
  if number == jnp.int8:
    return x.astype(jnp.bfloat16)
  # NOTE: no e4m3 -> bf16 instruction: via f16 (cvt e4m3x2) and f32.
  return lax.bitcast_convert_type(x, number).astype(jnp.float32).astype(
      jnp.bfloat16)
