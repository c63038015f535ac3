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

In GMEM q and O have the group's rows rounded up to 8 (Static.q_rows, one
TMA box each way), not N: the tile's other columns are never written (NaN
in interpret mode) and no real query's column reads them (the columns are
independent in every operation). NOTE: N-row q and O (an XLA pad and a
transpose beside the kernel) moved 36 MiB more at 256 x 1024; without them
that shape took 224.5 µs, not 236.2 (e4m3, H100, 2026-12-07,
docs/benchmarks.md).

Sᵀ comes one of two ways (DecodeMosaicConfig.qk_8bit):
  16-bit (default) K read from the 8-bit ring 64 rows at a time into
                  registers, converted to its wide_dtype there (bf16 for
                  int8, f16 for e4m3) and given to wgmma as a register A
                  operand, q a tile of the same type;
  8-bit (int8)    no conversion: one int8 wgmma (into int32, exact) per
                  term of q straight over the K stage, q given as two int8
                  terms (quantization.quantize_two_terms: q's quantization
                  and its residual's, each with a scale per query head), so
                  Sᵀ = Σ_t (K Q_tᵀ) q_scale_t holds q to about bf16's
                  precision, not int8's. Not for e4m3: decode_mosaic.supports.
V goes through the V converters' 16-bit stages either way (wgmma's A must be in
the WGMMA layout, and a transposed 8-bit load has no relayout to it; an 8-bit
A operand must be K-major, and Vᵀ is not).

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
COMPUTE_REGISTERS = {1: 256, 2: 144}  # by streams (decode_mosaic_q8's NOTE)


def q_cols(group: int) -> int:
  """The query tile's columns: the group rounded up to 16, 32 or 64."""
  return next(n for n in (16, 32, 64) if group <= n)


@dataclasses.dataclass(frozen=True)
class Bufs:
  """The compute warpgroup's shared memory (the `smem` tiling throughout):
  q [N, d] bf16, or with qk_8bit [2N, d] 8-bit (q's two terms, split_q),
  each term's first q_rows rows copied (the others never written: columns
  of Sᵀ, Pᵀ and Oᵀ no real query reads); q_scales [2, N] f32 (qk_8bit) or
  None; p [N, block_kv] bf16 (P, written as Pᵀ through a transposed view:
  wgmma takes one swizzle for both operands); out: O [N, d] bf16 (written as
  Oᵀ through a transposed view, its first q_rows rows stored) with one
  split, else Oᵀ [d, N] float32 (the split partial); lse [N] f32 or None; k
  [stages, block_kv, d] 8-bit (the ring's); v [STAGES16, block_kv, d] bf16;
  k_scales, v_scales [stages, block_kv] f16 (the ring's: gather_scales);
  k_tile [block_kv, d] bf16 in interpret mode without qk_8bit, else None
  (see _k_chunk)."""
  q: object
  q_scales: object
  p: object
  out: object
  lse: object
  k: object
  v: object
  k_scales: object
  v_scales: object
  k_tile: object = None


def wide_dtype(storage):
  """The 16-bit type an 8-bit cache's K and V become in the kernel, and q's
  tile and P with them: bf16 for int8 (Mosaic GPU's prmt/sub.bf16x2, exact),
  f16 for e4m3 (uint8 bits; one cvt.rn.f16x2.e4m3x2 per two values, exact:
  e4m3 is an f16 subset, where bf16 needs that, two to f32 and one back).

  NOTE: f16 carries q and P too (wgmma takes one type for both operands):
  q is clamped to f16's range (run_kernel), P = exp2(..) x V's scale is at
  most the scale (<= f16's largest, gather_scales), and f16's 11 bits keep
  both closer than bf16's 8.
  """
  return jnp.bfloat16 if jnp.dtype(storage) == jnp.int8 else jnp.float16


def buffers(cfg, head_dim: int, cols: int, number, smem) -> list:
  """q, q_scales, p, out, lse of Bufs (k, v and the scales are allocated
  beside); number: the 8-bit type of the K stages (q and p take its
  wide_dtype, out bf16)."""
  split, wide = cfg.num_splits > 1, wide_dtype(number)
  if cfg.qk_8bit:
    q = [smem((2 * cols, head_dim), number), plgpu.SMEM((2, cols), jnp.float32)]
  else:
    q = [smem((cols, head_dim), wide), None]
  out = (smem((head_dim, cols), jnp.float32) if split
         else smem((cols, head_dim), jnp.bfloat16))
  return q + [smem((cols, cfg.block_kv), wide), out,
              plgpu.SMEM((cols,), jnp.float32) if split else None]


def consumer(items, span_of, q_refs, out_refs, bufs: Bufs, bars, cfg,
             stages16: int, tickets=None):
  """Attention of the group over each of the CTA's items
  (decode_mosaic_items.Items; span_of(item): its Span; tickets: the Ring of
  dynamic tickets, else None). q_refs: (q [batch, hkv, R, d] bf16,) or with
  qk_8bit (q's terms [batch, hkv, 2R, d] 8-bit, their scales [batch, hkv, 2,
  N] f32) (GMEM; R = q_rows <= N, the tile's columns); out_refs: (o [batch,
  hkv, R, d],) or (partials [.., splits, d, N] f32, lse [.., splits, N] f32).

  NOTE: the ring's slots and phases run on over the items (`base`: the
  steps of the CTA's earlier items), as the producer's and converters' do.
  """
  plgpu.set_max_registers(COMPUTE_REGISTERS[cfg.streams], action="increase")

  def item(k, t, t_next, base):
    span = span_of(items.decode(t))
    pl.when(k == 0)(lambda: _copy_q(span, q_refs, bufs, bars))
    with jax.named_scope("wait_q"):
      plgpu.barrier_wait(bars["q"])
    acc, m, sums = _attend(span, bufs, bars, cfg, stages16, base)
    # q's next item lands while this one finishes (every wgmma over q is done)
    pl.when(t_next < items.count)(
        lambda: _copy_q(span_of(items.decode(t_next)), q_refs, bufs, bars))
    with jax.named_scope("finish"):
      _finish(span, out_refs, bufs, acc, m, sums)
    return base + span.num_steps

  items.fold(item, jnp.int32(0), tickets)
  plgpu.wait_smem_to_gmem(0)


def _copy_q(span, q_refs, bufs: Bufs, bars):
  """The item's q rows (each term's, and their scales, with qk_8bit) into
  the first rows of bufs.q: 1 or 3 copies (decode_mosaic_q8.q_inputs)."""
  terms = 1 if bufs.q_scales is None else 2
  src = q_refs[0].at[span.row, span.head]  # [terms * R, d]
  rows, cols = src.shape[0] // terms, bufs.p.shape[0]
  for t in range(terms):
    plgpu.copy_gmem_to_smem(src.at[pl.ds(t * rows, rows)],
                            bufs.q.at[pl.ds(t * cols, rows)], bars["q"])
  if bufs.q_scales is not None:  # [2, N] f32
    plgpu.copy_gmem_to_smem(q_refs[1].at[span.row, span.head], bufs.q_scales,
                            bars["q"])


def _attend(span, bufs: Bufs, bars, cfg, stages16: int, base):
  """(acc [d, N], m [N], sums [block_kv, N]) f32 over the span's steps, q in
  bufs.q; the steps take ring slots from `base` on."""
  cols, head_dim = bufs.p.shape[0], bufs.q.shape[1]
  q_scales = None
  if cfg.qk_8bit:  # [N] f32 each, loop-invariant
    q_scales = [plgpu.load(bufs.q_scales.at[t], layout=COLS) for t in range(2)]
  carry = (plgpu.layout_cast(jnp.zeros((head_dim, cols), jnp.float32), LAYOUT),
           plgpu.layout_cast(jnp.full((cols,), NEG_BIG, jnp.float32), COLS),
           plgpu.layout_cast(jnp.zeros((cfg.block_kv, cols), jnp.float32), LAYOUT))
  step = lambda masked: lambda i, c: _step(i, base + i, c, span, bufs, bars, cfg,
                                           stages16, q_scales, masked)
  carry = lax.fori_loop(0, span.num_full, step(False), carry)
  return lax.fori_loop(span.num_full, span.num_steps, step(True), carry)


def _finish(span, out_refs, bufs: Bufs, acc, m, sums):
  """O = acc / l (and with splits lse = m + log2 l) stored to GMEM (once the
  last item's store has read the buffers): O's first R rows into
  out_refs[0] [batch, hkv, R, d], or Oᵀ into the partials [.., splits, d, N]
  and lse [.., splits, N]."""
  l = sums.sum(axis=0)
  inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)  # empty: zeros
  out = acc * lax.broadcast_in_dim(inv, acc.shape, [1])  # Oᵀ [d, N]
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  if bufs.lse is None:
    rows = out_refs[0].shape[2]
    bufs.out.transpose((1, 0))[...] = out.astype(bufs.out.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(bufs.out.at[pl.ds(0, rows)],
                            out_refs[0].at[span.row, span.head])
    return
  dst = (span.row, span.head, span.split)
  bufs.out[...] = out
  bufs.lse[...] = jnp.where(l > 0, m + jnp.log2(jnp.where(l > 0, l, 1.0)),
                            NEG_BIG)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(bufs.out, out_refs[0].at[dst])
  plgpu.copy_smem_to_gmem(bufs.lse, out_refs[1].at[dst])


def _step(step, at, carry, span, bufs: Bufs, bars, cfg, stages16: int, q_scales,
          masked):
  """One step (the span's `step`, the CTA's `at`-th): Sᵀ, scales and mask,
  online softmax over the keys, Oᵀ += Vᵀ Pᵀ. q_scales: the scales of q's two
  8-bit terms ([N] f32 each) or None."""
  acc, m_prev, sums = carry  # [d, N] f32, [N] f32, [block_kv, N] f32
  slot, ring = lax.rem(at, stages16), lax.rem(at, cfg.stages)
  with jax.named_scope("wait_k"):
    plgpu.barrier_wait(bars["k8_ready"].at[ring])

  with jax.named_scope("qk"):
    s = (_qk_8bit(bufs, ring, cfg, q_scales) if cfg.qk_8bit
         else _qk_bf16(bufs, ring, cfg))
    plgpu.barrier_arrive(bars["k8_free"].at[ring])
  with jax.named_scope("softmax"):
    k_scale = plgpu.load(bufs.k_scales.at[ring], layout=KEYS).astype(jnp.float32)
    s = s * lax.broadcast_in_dim(k_scale * (cfg.scale * LOG2E), s.shape, [0])
    if masked:
      key = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=LAYOUT)
      s = jnp.where(key + (span.first_kv + step * cfg.block_kv) < span.end, s,
                    NEG_BIG)
    p, (acc, m_new, sums) = _online_softmax(s, (acc, m_prev, sums))
  with jax.named_scope("wait_v"):
    plgpu.barrier_wait(bars["v_ready"].at[slot])
  with jax.named_scope("p_store"):
    v_scale = plgpu.load(bufs.v_scales.at[ring], layout=KEYS).astype(jnp.float32)
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


def _qk_bf16(bufs: Bufs, ring, cfg):
  """Sᵀ [block_kv, N] f32 = K Qᵀ, K's chunks converted to 16 bits in registers."""
  def qk(acc_ref):  # acc_ref [block_kv, N] f32
    chunks = [pl.ds(r0, CHUNK_ROWS) for r0 in range(0, cfg.block_kv, CHUNK_ROWS)]
    ks = [_k_chunk(bufs, ring, rows) for rows in chunks]  # all before any wgmma
    for rows, k in zip(chunks, ks):
      plgpu.wgmma(acc_ref.at[rows], k, bufs.q.transpose((1, 0)))
    return acc_ref[...]
  return pl.run_scoped(qk, plgpu.ACC((cfg.block_kv, bufs.p.shape[0]), jnp.float32))


def _qk_8bit(bufs: Bufs, ring, cfg, q_scales):
  """Sᵀ [block_kv, N] f32 = Σ_t (K Q_tᵀ) q_scale_t: one 8-bit wgmma per term
  of q (split_q) straight over the K stage, no conversion."""
  cols = bufs.p.shape[0]

  def qk(*acc_refs):  # acc_refs: [block_kv, N] int32
    for t, acc_ref in enumerate(acc_refs):
      plgpu.wgmma(acc_ref, bufs.k.at[ring],
                  bufs.q.at[pl.ds(t * cols, cols)].transpose((1, 0)))
    return [acc_ref[...] for acc_ref in acc_refs]

  accs = pl.run_scoped(qk, *[plgpu.ACC((cfg.block_kv, cols), jnp.int32)] * 2)
  terms = [a.astype(jnp.float32) * lax.broadcast_in_dim(qs, a.shape, [1])
           for a, qs in zip(accs, q_scales)]
  return terms[0] + terms[1]


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
  """K's `rows` of 8-bit ring stage `ring` as P's type in registers (wgmma's
  LAYOUT), or, in interpret mode, through bufs.k_tile.

  NOTE: Mosaic GPU's interpreter takes wgmma operands from shared memory
  only; there the converted chunk is stored to k_tile first (the same
  numbers: the conversion is exact either way).
  """
  k = widen(plgpu.load(bufs.k.at[ring].at[rows], layout=LAYOUT), bufs.p.dtype)
  if bufs.k_tile is None:
    return k
  bufs.k_tile.at[rows][...] = k
  plgpu.commit_smem()
  return bufs.k_tile.at[rows]


def widen(x, dtype):
  """8-bit values (int8, float8_e4m3fn, or e4m3 bits in uint8) as `dtype`
  (bf16 or f16), exactly."""
  if x.dtype == jnp.int8:
    return x.astype(dtype)
  if x.dtype == jnp.uint8:
    x = quantization.numbers(x)
  if dtype == jnp.float16:
    return x.astype(jnp.float16)  # one cvt per two values
  # NOTE: no e4m3 -> bf16 instruction on Hopper: via f16 and f32.
  return x.astype(jnp.float32).astype(jnp.bfloat16)
