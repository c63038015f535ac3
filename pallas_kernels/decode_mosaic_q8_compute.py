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

Sᵀ comes one of two ways (DecodeMosaicConfig.qk_8bit):
  bf16 (default)  K read from the 8-bit ring 64 rows at a time into
                  registers, converted to bf16 there and given to wgmma as a
                  register A operand, q a bf16 tile;
  8-bit (int8)    no conversion: one int8 wgmma (into int32, exact) per
                  term of q straight over the K stage, q given as two int8
                  terms (quantization.quantize_two_terms: q's quantization
                  and its residual's, each with a scale per query head), so
                  Sᵀ = Σ_t (K Q_tᵀ) q_scale_t holds q to about bf16's
                  precision, not int8's. Not for e4m3: decode_mosaic.supports.
V goes through the V converters' bf16 stages either way (wgmma's A must be in
the WGMMA layout, and a transposed 8-bit load has no relayout to it; an 8-bit
A operand must be K-major, and Vᵀ is not).

K's per-key scales multiply Sᵀ's rows, V's multiply Pᵀ's rows before P V.

With DecodeMosaicConfig.fold = F > 1 a step's keys are F runs of R =
block_kv / F (>= 64) folded into the columns: q is F slabs [N, d], slab f
holding the group in columns [f G, (f + 1) G) (G the group, zeros elsewhere;
decode_mosaic_q8.fold_q), so Sᵀ [R, N] = Σ_f K[f R : (f + 1) R] Q_fᵀ holds
key f R + i of query j at (i, f G + j). Each column is its own softmax (max,
sums); Pᵀ goes to the P stage as F row slabs, slab f masked to fold f's
columns, so the one P V wgmma over the step's keys gives column f G + j fold
f's share of query j's output. The shares leave as split partials (an lse a
column), merged outside (decode_mosaic_q8.unfold). The softmax's
elementwise work a step is 1/F of the unfolded tile's; the wgmma count is
unchanged.
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
  q [N, d] bf16, or with qk_8bit [2N, d] 8-bit (q's two terms, split_q);
  q_scales [2, N] f32 (qk_8bit) or None; p [N, block_kv] bf16 (P, written
  as Pᵀ through a transposed view: wgmma takes one swizzle for both
  operands); out [d, N] (Oᵀ: q's dtype with one split, else float32); lse
  [N] f32 or None; k [stages, block_kv, d] 8-bit (the ring's); v [STAGES16,
  block_kv, d] bf16; k_scales, v_scales [stages, block_kv] f32 (the
  ring's); k_tile [block_kv, d] bf16 in interpret mode without qk_8bit,
  else None (see _k_chunk)."""
  q: object  # with fold F: F slabs of N rows (a term's slabs together)
  q_scales: object
  p: object
  out: object
  lse: object
  k: object
  v: object
  k_scales: object
  v_scales: object
  k_tile: object = None


def partials(cfg) -> bool:
  """Whether the kernel leaves split partials and their lse (splits or folds)."""
  return cfg.num_splits > 1 or cfg.fold > 1


def buffers(cfg, head_dim: int, cols: int, number, smem) -> list:
  """q, q_scales, p, out, lse of Bufs (k, v and the scales are allocated
  beside); number: the 8-bit type of the K stages."""
  split = partials(cfg)
  slabs = cfg.fold * cols
  if cfg.qk_8bit:
    q = [smem((2 * slabs, head_dim), number), plgpu.SMEM((2, cols), jnp.float32)]
  else:
    q = [smem((slabs, head_dim), jnp.bfloat16), None]
  return q + [smem((cols, cfg.block_kv), jnp.bfloat16),
              smem((head_dim, cols), jnp.float32 if split else jnp.bfloat16),
              plgpu.SMEM((cols,), jnp.float32) if split else None]


def consumer(span, q_refs, out_refs, bufs: Bufs, bars, cfg, stages16: int):
  """Attention of the group over the span's steps. q_refs: (q [batch, hkv,
  N, d] bf16,) or with qk_8bit (q's terms [batch, hkv, 2N, d] 8-bit, their
  scales [batch, hkv, 2, N] f32) (GMEM); out_refs: (oᵀ [batch, hkv, d, N],)
  or (partials [.., splits, d, N] f32, lse [.., splits, N] f32)."""
  plgpu.set_max_registers(COMPUTE_REGISTERS[cfg.streams], action="increase")
  for ref, buf in zip(q_refs, (bufs.q, bufs.q_scales)):
    plgpu.copy_gmem_to_smem(ref.at[span.row, span.head], buf, bars["q"])
  plgpu.barrier_wait(bars["q"])
  cols, head_dim = bufs.p.shape[0], bufs.q.shape[1]
  rows = cfg.block_kv // cfg.fold  # Sᵀ's rows: a fold's keys
  q_scales = None
  if cfg.qk_8bit:  # [N] f32 each, loop-invariant
    q_scales = [plgpu.load(bufs.q_scales.at[t], layout=COLS) for t in range(2)]
  carry = (plgpu.layout_cast(jnp.zeros((head_dim, cols), jnp.float32), LAYOUT),
           plgpu.layout_cast(jnp.full((cols,), NEG_BIG, jnp.float32), COLS),
           plgpu.layout_cast(jnp.zeros((rows, cols), jnp.float32), LAYOUT))
  step = lambda masked: lambda i, c: _step(i, c, span, bufs, bars, cfg,
                                           stages16, q_scales, masked)
  carry = lax.fori_loop(0, span.num_full, step(False), carry)
  acc, m, sums = lax.fori_loop(span.num_full, span.num_steps, step(True), carry)
  _finish(span, out_refs, bufs, acc, m, sums)


def _finish(span, out_refs, bufs: Bufs, acc, m, sums):
  """Oᵀ = acc / l (and with splits lse = m + log2 l) stored to GMEM."""
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


def _step(step, carry, span, bufs: Bufs, bars, cfg, stages16: int, q_scales,
          masked):
  """One step: Sᵀ, scales and mask, online softmax over the keys, Oᵀ += Vᵀ Pᵀ.
  q_scales: the scales of q's two 8-bit terms ([N] f32 each) or None."""
  acc, m_prev, sums = carry  # [d, N] f32, [N] f32, [R, N] f32 (R: a fold's keys)
  slot, ring = lax.rem(step, stages16), lax.rem(step, cfg.stages)
  with jax.named_scope("wait_k"):
    plgpu.barrier_wait(bars["k8_ready"].at[ring])

  with jax.named_scope("qk"):
    # NOTE: with folds a key's row meets every fold's q slab (zeros outside
    # its own columns), so e4m3's NaN bits past the row's end must not reach
    # the wgmma: 0 * NaN would spoil the other folds' columns; int8 has no NaN.
    left = (span.end - (span.first_kv + step * cfg.block_kv)
            if masked and cfg.fold > 1 and bufs.k.dtype == jnp.uint8 else None)
    s = (_qk_8bit(bufs, ring, cfg, q_scales) if cfg.qk_8bit
         else _qk_bf16(bufs, ring, cfg, left))
    plgpu.barrier_arrive(bars["k8_free"].at[ring])
  folds = Folds(cfg, s.shape)
  with jax.named_scope("softmax"):
    s = s * folds.per_key(bufs.k_scales.at[ring], cfg.scale * LOG2E)
    if masked:
      key = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=LAYOUT)
      s = jnp.where(key + folds.offset() + (span.first_kv + step * cfg.block_kv)
                    < span.end, s, NEG_BIG)
    p, (acc, m_new, sums) = _online_softmax(s, (acc, m_prev, sums))
  with jax.named_scope("wait_v"):
    plgpu.barrier_wait(bars["v_ready"].at[slot])
  with jax.named_scope("p_store"):
    p_t = bufs.p.transpose((1, 0))  # [block_kv, N], stored transposed
    folds.store(p_t, p * folds.per_key(bufs.v_scales.at[ring]))
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


def _q_slab(bufs: Bufs, cfg, fold: int, term: int = 0):
  """Qᵀ [d, N] of fold `fold` (and of q's 8-bit term `term`) in the q tile."""
  cols = bufs.p.shape[0]
  return bufs.q.at[pl.ds((term * cfg.fold + fold) * cols, cols)].transpose((1, 0))


def _qk_bf16(bufs: Bufs, ring, cfg, left=None):
  """Sᵀ [R, N] f32 = Σ_f K_f Q_fᵀ, K's chunks converted to bf16 in registers
  (the step's rows from `left` on zeroed, if given)."""
  rows = cfg.block_kv // cfg.fold

  def qk(acc_ref):  # acc_ref [R, N] f32
    firsts = range(0, cfg.block_kv, CHUNK_ROWS)
    ks = [_k_chunk(bufs, ring, pl.ds(r0, CHUNK_ROWS), left, r0) for r0 in firsts]
    for r0, k in zip(firsts, ks):
      plgpu.wgmma(acc_ref.at[pl.ds(r0 % rows, CHUNK_ROWS)], k,
                  _q_slab(bufs, cfg, r0 // rows))
    return acc_ref[...]
  return pl.run_scoped(qk, plgpu.ACC((rows, bufs.p.shape[0]), jnp.float32))


def _qk_8bit(bufs: Bufs, ring, cfg, q_scales):
  """Sᵀ [R, N] f32 = Σ_t (Σ_f K_f Q_tfᵀ) q_scale_t: an 8-bit wgmma per term of
  q (split_q) and fold straight over the K stage, no conversion."""
  cols, rows = bufs.p.shape[0], cfg.block_kv // cfg.fold

  def qk(*acc_refs):  # acc_refs: [R, N] int32
    for t, acc_ref in enumerate(acc_refs):
      for f in range(cfg.fold):
        plgpu.wgmma(acc_ref, bufs.k.at[ring].at[pl.ds(f * rows, rows)],
                    _q_slab(bufs, cfg, f, t))
    return [acc_ref[...] for acc_ref in acc_refs]

  accs = pl.run_scoped(qk, *[plgpu.ACC((rows, cols), jnp.int32)] * 2)
  terms = [a.astype(jnp.float32) * lax.broadcast_in_dim(qs, a.shape, [1])
           for a, qs in zip(accs, q_scales)]
  return terms[0] + terms[1]


class Folds:
  """A step's keys as Sᵀ's [R, N] tile holds them: fold f (keys f R + i) in
  columns [f G, (f + 1) G), the padding columns with the last fold."""

  def __init__(self, cfg, shape):
    self.rows, self.shape = shape[0], shape
    self.starts = [f * cfg.group for f in range(cfg.fold)]  # folds' first columns
    self.col = (plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=LAYOUT)
                if cfg.fold > 1 else None)

  def per_key(self, scales_ref, factor=1.0):
    """[R, N] f32: each element's key's scale (scales_ref [block_kv] f32, the
    ring's) times factor."""
    out = None
    for f, start in enumerate(self.starts):
      v = plgpu.load(scales_ref.at[pl.ds(f * self.rows, self.rows)], layout=KEYS)
      v = lax.broadcast_in_dim(v * factor, self.shape, [0])
      out = v if out is None else jnp.where(self.col >= start, v, out)
    return out

  def offset(self):
    """[R, N] int32 (0 unfolded): each element's key less its row."""
    return sum((jnp.where(self.col >= start, self.rows, 0)
                for start in self.starts[1:]), 0)

  def store(self, p_t, p):
    """p [R, N] f32 into p_t [block_kv, N] bf16: fold f's columns as rows
    [f R, (f + 1) R), zero in the other folds' columns."""
    if self.col is None:
      p_t[...] = p.astype(p_t.dtype)
      return
    for f, start in enumerate(self.starts):
      mine = self.col >= start
      if f + 1 < len(self.starts):
        mine = mine & (self.col < self.starts[f + 1])
      p_t.at[pl.ds(f * self.rows, self.rows)][...] = jnp.where(
          mine, p, 0.0).astype(p_t.dtype)


def _online_softmax(s, carry):
  """Pᵀ = exp2(Sᵀ - max) [R, N] f32 and the carry (acc [d, N], m [N], sums
  [R, N]) rescaled to the new max over the step's keys."""
  acc, m_prev, sums = carry
  m_new = jnp.maximum(m_prev, s.max(axis=0))
  alpha = jnp.exp2(m_prev - m_new)
  p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [1]))
  sums = sums * lax.broadcast_in_dim(alpha, s.shape, [1]) + p
  return p, (acc * lax.broadcast_in_dim(alpha, acc.shape, [1]), m_new, sums)


def _k_chunk(bufs: Bufs, ring, rows, left=None, first: int = 0):
  """K's `rows` (from `first`) of 8-bit ring stage `ring` as bf16 in
  registers (wgmma's LAYOUT), rows from `left` on zeroed if given, or, in
  interpret mode, through bufs.k_tile.

  NOTE: Mosaic GPU's interpreter takes wgmma operands from shared memory
  only; there the converted chunk is stored to k_tile first (the same
  numbers: the conversion is exact either way).
  """
  k = to_bf16(plgpu.load(bufs.k.at[ring].at[rows], layout=LAYOUT))
  if left is not None:
    row = plgpu.broadcasted_iota(jnp.int32, k.shape, 0, layout=LAYOUT)
    k = jnp.where(row + first < left, k, jnp.zeros_like(k))
  if bufs.k_tile is None:
    return k
  bufs.k_tile.at[rows][...] = k
  plgpu.commit_smem()
  return bufs.k_tile.at[rows]


def to_bf16(x):
  """8-bit values (int8, float8_e4m3fn, or e4m3 bits in uint8) as bf16,
  exactly."""
  if x.dtype == jnp.int8:
    return x.astype(jnp.bfloat16)
  if x.dtype == jnp.uint8:
    x = quantization.numbers(x)
  # NOTE: no e4m3 -> bf16 instruction: via f16 (cvt e4m3x2) and f32.
  return x.astype(jnp.float32).astype(jnp.bfloat16)
