"""8-bit caches (int8, float8_e4m3 bits in uint8) in the Mosaic GPU decode.

wgmma cannot read V's 8-bit values as they lie (an 8-bit operand must be
K-major), so V becomes bf16 in converter warpgroups; K becomes bf16 in the
compute warpgroup's registers, or is read by an 8-bit wgmma as it lies
(DecodeMosaicConfig.qk_8bit, q then in two 8-bit terms):

  memory warpgroup   TMA of a step's 8-bit K and V (one copy per KV block)
                     into a ring of `stages` 8-bit stages, and of their
                     float32 scales (one copy each, from the row's scales
                     gathered in token order by `gather_scales`);
  V converters       `v_converters` warpgroups (1 or 2), each its 64-row
                     chunks of a step: 8-bit stage -> registers -> bf16 into
                     the compute warpgroup's STAGES16 stages; a pure bit
                     conversion, no scale; rows past the row's end zeroed;
  compute warpgroup  decode_mosaic_q8_compute.consumer, transposed (keys as
                     wgmma's M, the GQA group as N); K's per-key scales
                     multiply Sᵀ's rows, V's Pᵀ's rows before P V (float32).

With DecodeMosaicConfig.streams = 2 a CTA takes two KV heads of a row (grid
(batch, hkv / 2, splits)): two compute warpgroups and two V converters, each
pair with its own stages and barriers, and one memory warpgroup copying both
(the heads share the row's blocks). NOTE: the profile says one compute
warpgroup's dependent chain bounds the kernel (docs/benchmarks.md, 2026-12-07),
and 384 threads at 168 registers allow one CTA an SM: two streams put two
such chains on an SM (at block_kv 64: two of everything in shared memory;
at 128 with one 16-bit V stage and two 8-bit ones they fit, and were
1.19-1.37x slower than at 64 on the H100, 2026-12-07). Each compute
warpgroup has its own reduction scratch (_behind_pads).

The grid is one CTA per (row, KV-head group, split) item, or with
DecodeMosaicConfig.ctas at most that many CTAs each taking items in turn, or
with `dynamic` from a global counter (decode_mosaic_items.py: one item's
first stages land while the last one's compute finishes); with `issuers` > 1
the memory warpgroup's warps issue shares of its copies
(decode_mosaic_q8_stages.producer).

int8 -> bf16 is Mosaic GPU's prmt/sub.bf16x2 sequence (no integer-to-float
instruction); e4m3 becomes f16 (one cvt.f16x2.e4m3x2 per two values; q and
P then f16 too: decode_mosaic_q8_compute.wide_dtype; through f32 to bf16 it
was 1-2 % slower and twice the error, H100 2026-12-08). NOTE (H200, 2026-12-03,
docs/benchmarks.md): with a K converter warpgroup and 16-bit K stages this
kernel took 0.95-1.11x the bf16 kernel's time where the bytes say 0.44x;
with K in registers 0.85-1.06x. 2, 3 or 4 8-bit stages time the same, and
neither conversion bounds it: without the V conversion 0.88x the time,
without K's loads and conversion none faster; two compute warpgroups on
alternate steps were no faster (and raced on the GPU), so the kernel has
one. Mosaic GPU's profiler over the named scopes: the compute warpgroup
hardly waits, 43-51 % of its step is qk (K's conversion; the two wgmma are
small), and the V converter's conversion takes as long: getting 8-bit
chunks into bf16 in the WGMMA layout is what a faster kernel must cut (not
the arithmetic: other exact conversion chains timed the same). qk_8bit and
a second V converter take K's conversion off the compute warpgroup and
halve the converter's share of V's; the device's table picks them. On the
H100 (2026-12-05): int8's qk_8bit 2-7 % faster at full length; e4m3's
slower and wrong on the GPU (decode_mosaic.supports refuses it); two V
converters 1-6 % slower everywhere. On the H200 (2026-12-06): int8's
qk_8bit 5-13 % faster at full length, two V converters 3-9 % slower. Per-block
bulk copies of the scales (no gather) were 1.24-1.37x slower on the H100, and
a V converter in WGMMA_UPCAST_4X no clear gain on the H200; the compute
warpgroup pipelined by a step (the next Sᵀ and the previous P V wgmma issued
before its softmax) no faster on the H100 (2026-12-07, docs/benchmarks.md).

Buffers, barriers and the memory and converter warpgroups:
decode_mosaic_q8_stages.py.

NOTE: the scales are gathered outside the kernel (an XLA gather of 1/64 of
the values' bytes at head_dim 128) because a KV block's 16 scales are 64
bytes, and a TMA copy per block into one [block_kv] buffer faulted on the
H200 (misaligned address: a tensor copy's shared-memory end must be
128-byte aligned). The gather also zeroes the scales at and past each row's
length: a step past the end reads slots no token was written to (NaN
scales and NaN e4m3 bits in the tests' poison), and Pᵀ's masked keys
times a zero scale stay zero. The V converter zeroes those rows' values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import decode_mosaic_items
from pallas_kernels import decode_mosaic_kernel as kernel
from pallas_kernels import decode_mosaic_q8_compute as compute
from pallas_kernels import decode_mosaic_q8_stages as stages
from pallas_kernels import quantization
from pallas_kernels.prefill_mosaic import interpret_params
from pallas_kernels.prefill_mosaic import smem_buffer


def compiler_params():
  """The kernel's CompilerParams, made when it is traced.

  NOTE: not a module constant: benchmarks/decode_mosaic_inside.py turns
  Mosaic GPU's profiler on by replacing plgpu.CompilerParams after import
  (with a constant made at import the profiler stayed off and wrote no
  trace, H100, 2026-12-07).
  """
  return plgpu.CompilerParams(approx_math=True)


# The shared memory of one cross-warp reduction's scratch (_behind_pads).
REDUCTION_SCRATCH = compiler_params().reduction_scratch_bytes
STAGES16 = stages.STAGES16


def smem_bytes(config, head_dim: int, cols: int) -> int:
  """Shared memory of a stream's buffers (before Mosaic's alignment) and its
  reduction scratch (_behind_pads) for a DecodeMosaicConfig and `cols` query
  columns."""
  out = 4 if config.num_splits > 1 else 2
  q = 2 * cols * (head_dim + 4) if config.qk_8bit else cols * head_dim * 2
  tiles = q + config.block_kv * cols * 2 + head_dim * cols * out
  stages16 = STAGES16 * config.block_kv * head_dim * 2  # V only
  stages8 = 2 * config.stages * config.block_kv * (head_dim + 2)
  return tiles + cols * 4 + stages16 + stages8 + REDUCTION_SCRATCH


def run_kernel(qp, kv_cache, block_tables, lengths, cfg, interpret=False):
  """The kernel over an 8-bit cache: qp [batch, hkv, q_rows, d] bf16 -> as
  decode_mosaic.run_kernel's outputs (the split partials, stored transposed,
  swapped back; lse [.., splits, q_cols(q_rows)])."""
  batch, hkv, rows, head_dim = qp.shape
  cols = compute.q_cols(rows)
  scales = gather_scales(kv_cache.scales, block_tables, lengths, cfg.block_kv)
  part = (batch, hkv, cfg.num_splits)
  if cfg.num_splits == 1:
    out_type = jax.ShapeDtypeStruct(qp.shape, qp.dtype)
  else:
    out_type = (jax.ShapeDtypeStruct(part + (head_dim, cols), jnp.float32),
                jax.ShapeDtypeStruct(part + (cols,), jnp.float32))
  q_args = (split_q(qp, kv_cache.values.dtype, cols) if cfg.qk_8bit
            else (wide_q(qp, kv_cache.values.dtype),))
  warpgroups = num_warpgroups(cfg)
  items = decode_mosaic_items.Items(batch, hkv // cfg.streams, cfg)  # the grid's work
  out = plgpu.kernel(
      functools.partial(_entry, cfg=cfg, items=items, interpret=bool(interpret)),
      out_type=out_type,
      grid=(items.ctas,),
      grid_names=("cta",),
      num_threads=warpgroups, thread_name="wg",
      compiler_params=compiler_params(),
      interpret=interpret_params(interpret, warpgroups),
      kernel_name="paged_decode_mosaic_q8",
  )(lengths, block_tables.reshape(-1), kv_cache.values, scales, *q_args)
  if cfg.num_splits == 1:
    return out
  return out[0].swapaxes(-1, -2)[..., :rows, :], out[1]


def num_warpgroups(cfg) -> int:
  """The kernel's warpgroups (_entry's order): each stream's compute
  warpgroup and V converters, and one memory warpgroup."""
  return cfg.streams * (1 + cfg.v_converters) + 1


def q_inputs(cfg) -> int:
  """The TMA copies of an item's q: one, or with qk_8bit one per 8-bit term
  and one of their scales (split_q)."""
  return 3 if cfg.qk_8bit else 1


def wide_q(qp, storage):
  """qp [batch, hkv, R, d] bf16 as the 16-bit type the kernel gives K
  (compute.wide_dtype): itself, or for f16 clamped to f16's range (an XLA
  elementwise op, fused with q's pad)."""
  wide = compute.wide_dtype(storage)
  if qp.dtype == wide:
    return qp
  # NOTE: clamped in f32: f16's largest (65504) rounds to 65536 in bf16,
  # which is inf in f16.
  big = float(jnp.finfo(wide).max)
  return jnp.clip(qp.astype(jnp.float32), -big, big).astype(wide)


def split_q(qp, storage, cols: int):
  """qp [batch, hkv, R, d] bf16 -> q's two 8-bit terms [batch, hkv, 2R, d]
  of the cache's `storage` dtype (int8: quantization.quantize_two_terms, one
  scale per query head and term) and their scales [batch, hkv, 2, cols] f32
  (zero past R: the query tile's columns)."""
  terms, scales = quantization.quantize_two_terms(qp, storage)
  scales = scales.transpose(1, 2, 0, 3)
  pad = cols - scales.shape[-1]
  return (jnp.concatenate([terms[0], terms[1]], axis=2),
          jnp.pad(scales, ((0, 0), (0, 0), (0, 0), (0, pad))))


def _entry(len_ref, bt_ref, values_ref, scales_ref, *refs, cfg, items, interpret):
  """Allocates shared memory and barriers (each stream its own), then splits
  by warpgroup: 0 .. streams - 1 the streams' compute warpgroups, `streams`
  the memory warpgroup, then each stream's V converters.

  len_ref int32 [batch]; bt_ref int32 [batch * max_blocks]; values_ref
  [num_blocks, hkv, 2, block_size, d] int8 or uint8 (float8_e4m3fn with
  qk_8bit); scales_ref [batch, hkv, 2, tokens] f32 (gather_scales); refs:
  the consumer's q_refs (1 or 2), then the outputs (all GMEM).
  items: the grid's decode_mosaic_items.Items; interpret: adds the compute
  warpgroup's k_tile (decode_mosaic_q8_compute) and keeps dynamic tickets
  static (decode_mosaic_items.Ring).
  """
  q_refs = refs[:2 if cfg.qk_8bit else 1]  # qp, or split_q's terms and scales
  out_refs = refs[len(q_refs):]
  head_dim, cols = q_refs[0].shape[-1], compute.q_cols(cfg.q_rows)
  block_size = values_ref.shape[3]

  def body(*smem, **bars):
    per = len(smem) // cfg.streams
    streams = [_stream(smem[i * per:(i + 1) * per], bars, i)
               for i in range(cfg.streams)]
    spans = [functools.partial(kernel.Span, len_ref, cfg, block_size, i)
             for i in range(cfg.streams)]  # spans[i](item): stream i's
    ring = (decode_mosaic_items.Ring.of(items, bars, interpret)
            if items.dynamic else None)
    wg = lax.axis_index("wg")
    consumers = [functools.partial(
        pl.when(wg == i), functools.partial(
            compute.consumer, items, spans[i], q_refs, out_refs, bufs, sbars,
            cfg, STAGES16, ring)) for i, (bufs, _, _, sbars) in enumerate(streams)]

    def others():  # the converters and the memory warpgroup (no reductions)
      for i, (_, stage8, v16, sbars) in enumerate(streams):
        for c in range(cfg.v_converters):
          pl.when(wg == cfg.streams + 1 + i * cfg.v_converters + c)(
              functools.partial(stages.converter, items, spans[i], stage8[1], v16,
                                sbars, cfg, c, ring))
      pl.when(wg == cfg.streams)(lambda: stages.producer(
          items, spans, bt_ref, values_ref, scales_ref,
          [st[1] for st in streams], [st[3] for st in streams], cfg, ring))

    _behind_pads(consumers, others)

  wide = compute.wide_dtype(values_ref.dtype)
  one = [*compute.buffers(cfg, head_dim, cols, values_ref.dtype, smem_buffer),
         smem_buffer((STAGES16, cfg.block_kv, head_dim), wide),
         *stages.buffers(cfg, head_dim, values_ref.dtype, smem_buffer),
         smem_buffer((cfg.block_kv, head_dim), wide)
         if interpret and not cfg.qk_8bit else None]
  bars = {f"{k}_{i}": b for i in range(cfg.streams)
          for k, b in stages.barriers(cfg, block_size, q_inputs(cfg)).items()}
  if items.dynamic:
    bars.update(decode_mosaic_items.scratch(cfg))
  pl.run_scoped(body, *one * cfg.streams, **bars, collective_axes="wg")


def _behind_pads(consumers, others):
  """Lowers consumers[i] (stream i's compute warpgroup) inside i nested pads
  of REDUCTION_SCRATCH bytes, and others() in the innermost scope.

  NOTE: Mosaic GPU puts a cross-warp reduction's scratch at the shared memory
  in use where it is lowered, one offset for every warpgroup: two compute
  warpgroups lowered side by side raced on it (two streams were wrong on the
  H100, 2026-12-07). A pad moves the next stream's scratch past the last
  one's. Every thread enters every pad's scope (a CTA barrier) before any
  role's work, and none after: a stream's loop waits on the others.
  """
  if len(consumers) == 1:
    others()
    consumers[0]()
    return
  pad = plgpu.SMEM((REDUCTION_SCRATCH // 4,), jnp.float32)
  pl.run_scoped(lambda _: _behind_pads(consumers[1:], others), pad,
                collective_axes="wg")
  consumers[0]()


def _stream(smem, bars, i: int):
  """Stream i's (compute.Bufs, 8-bit ring, 16-bit V stages, barriers by name)
  from its share of _entry's buffers (compute tiles, V16, ring, k_tile)."""
  tiles, v16, ring, k_tile = smem[:5], smem[5], smem[6:10], smem[10]
  bufs = compute.Bufs(*tiles, ring[0], v16, ring[2], ring[3], k_tile)
  sbars = {k[:-len(f"_{i}")]: b for k, b in bars.items() if k.endswith(f"_{i}")}
  return bufs, ring, v16, sbars


def gather_scales(scales, block_tables, lengths, block_kv: int):
  """scales [blocks, hkv, 2, bs] f32 -> [batch, hkv, 2, tokens] stages.SCALES
  (f16) in each row's token order (tokens: the table's, rounded up to whole
  steps), zero at and past the row's length.

  NOTE: f16 halves the gather's writes and the kernel's reads of them (16
  MiB each at 256 x 1024 with f32). A scale (a token's absolute maximum over
  127 or 448) keeps 11 bits (relative error <= 2^-12) down to f16's smallest
  normal, 6.1e-5; below it its error is at most 2^-25, so a dequantized
  value (<= 448 scales) moves by at most 1.3e-5. Above f16's largest it
  would be inf, so it is clamped there (an absolute maximum over 8e6).
  """
  batch, max_blocks = block_tables.shape
  _, hkv, _, bs = scales.shape
  rows = scales[block_tables].transpose(0, 2, 3, 1, 4)  # [batch, hkv, 2, mb, bs]
  rows = rows.reshape(batch, hkv, 2, max_blocks * bs)
  pad = -(max_blocks * bs) % block_kv
  rows = jnp.pad(rows, ((0, 0), (0, 0), (0, 0), (0, pad))) if pad else rows
  token = jnp.arange(rows.shape[-1], dtype=jnp.int32)
  rows = jnp.minimum(rows, float(jnp.finfo(stages.SCALES).max))
  return jnp.where(token < lengths[:, None, None, None], rows, 0.0).astype(
      stages.SCALES)
