"""Paged decode attention as a Pallas Mosaic GPU kernel (Hopper).

Same contract as decode_triton.py. Grid (batch, KV heads, splits); the body
and its TMA pipeline are in decode_mosaic_kernel.py. The query heads of a KV
head are one box of q viewed as [batch, hkv, group, d] (zero-padded to 8
rows when the group is no multiple of 8), and so is the output.

Supported: 16-bit caches (bf16, f16) and 8-bit ones (`QuantizedKV`, with a
bf16 q: decode_mosaic_q8.py adds converter warpgroups), head_dim a
multiple of 64, GQA groups of at most 64; `supports()` says so and decode.py
sends everything else (float32 caches) to the Triton kernel.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import decode_mosaic_kernel as kernel
from pallas_kernels import decode_mosaic_q8 as q8
from pallas_kernels import quantization
from pallas_kernels.decode_mosaic_q8_compute import q_cols
from pallas_kernels.prefill_mosaic import SMEM_BYTES
from pallas_kernels.prefill_mosaic import interpret_params
from pallas_kernels.prefill_mosaic import smem_buffer
from pallas_kernels.prefill_mosaic_kernel import ALIGN
from pallas_kernels.prefill_mosaic_kernel import ROWS_PER_WG
from pallas_kernels.prefill_mosaic_memory import copies_per_stage
from pallas_kernels.prefill_mosaic_memory import producer


# NOTE: Mosaic aligns each SMEM buffer; lowering measured 2,928 bytes over the
# buffers' sizes with split partials (jax 0.11.2).
ALIGN_SLACK = 4096


@dataclasses.dataclass(frozen=True)
class DecodeMosaicConfig:
  """Tiling of the Mosaic decode kernel (static)."""
  block_kv: int = 128  # cache tokens per pipeline step: 64, 128 or 256
  stages: int = 2  # K/V stages in flight, >= 2
  num_splits: int = 1  # CTAs per (row, KV head), each a run of whole steps
  # 8-bit caches only (decode_mosaic_q8.py): Sᵀ by an 8-bit wgmma over the K
  # stage with q in two 8-bit terms (else K converted to bf16 in registers;
  # int8 caches only), and the V converter warpgroups (2 needs block_kv >= 128).
  qk_8bit: bool = False
  v_converters: int = 1
  # 8-bit caches only: KV heads per CTA (2: two compute warpgroups, two V
  # converters and two sets of stages on one SM, one memory warpgroup).
  streams: int = 1
  # 8-bit caches only: 0, one CTA per (row, KV-head group, split); n > 0, at
  # most n CTAs, each taking items in turn (decode_mosaic_items.Items), so
  # that one item's pipeline fills while the last one's compute finishes (the
  # SM count).
  ctas: int = 0
  # 8-bit caches only: warps of the memory warpgroup issuing the copies (1, 2
  # or 4, at most 2 x streams), each a share of the (stream, K or V) copies.
  issuers: int = 1
  # 8-bit caches with ctas > 0 only: each CTA's next item from a global
  # counter as it starts one (decode_mosaic_items: dynamic tickets), not the
  # static turn, so CTAs that stream faster take more.
  dynamic: bool = False

  def __post_init__(self):
    if self.block_kv not in (64, 128, 256):
      raise ValueError(f"block_kv must be 64, 128 or 256, got {self.block_kv}")
    if self.stages < 2:
      raise ValueError(f"stages must be >= 2, got {self.stages}")
    if self.num_splits < 1:
      raise ValueError(f"num_splits must be >= 1, got {self.num_splits}")
    if self.v_converters not in (1, 2) or self.v_converters * 64 > self.block_kv:
      raise ValueError(f"v_converters must be 1 or 2 (and 64 rows each of "
                       f"block_kv {self.block_kv}), got {self.v_converters}")
    if self.streams not in (1, 2) or (self.streams == 2 and self.v_converters != 1):
      raise ValueError(f"streams must be 1 or 2 (2 with one V converter each), "
                       f"got {self.streams}")
    if self.ctas < 0:
      raise ValueError(f"ctas must be >= 0, got {self.ctas}")
    if self.issuers not in (1, 2, 4) or self.issuers > 2 * self.streams:
      raise ValueError(f"issuers must be 1, 2 or 4 (at most 2 x streams "
                       f"{self.streams}), got {self.issuers}")
    if self.dynamic and not self.ctas:
      raise ValueError("dynamic tickets need ctas > 0")

  def smem_bytes(self, head_dim: int, itemsize: int, q8_cols: int = 0) -> int:
    """Shared memory of the Q/O tile, the K/V stages, the split partials and
    each buffer's alignment (P through shared memory, interpret mode only, is
    not counted); with q8_cols, of the 8-bit kernel with that many query
    columns (decode_mosaic_q8.smem_bytes)."""
    if q8_cols:
      return self.streams * q8.smem_bytes(self, head_dim, q8_cols) + ALIGN_SLACK
    part = (ROWS_PER_WG * head_dim + ROWS_PER_WG) * 4 if self.num_splits > 1 else 0
    return ((ROWS_PER_WG + 2 * self.stages * self.block_kv) * head_dim * itemsize
            + part + ALIGN_SLACK)


def supports(q: jax.Array, kv_cache, config: DecodeMosaicConfig) -> bool:
  """Whether the Mosaic kernel runs these operands with `config`: a 16-bit q
  over a cache of its dtype or a bf16 q over an 8-bit one (v_converters,
  streams, ctas, issuers and dynamic for 8-bit caches only, qk_8bit for
  int8 ones only, streams dividing the KV heads), head_dim % 64 == 0, group
  <= 64, shared memory fits.

  NOTE: no qk_8bit over e4m3: on the H100 (2026-12-05) its e4m3 wgmma gave a
  relative error of 2.5e-2 (the bf16 way 2.4e-3; 2.5e-3 in interpret mode)
  and took 1.13-1.39x the time, where int8's (exact, into int32) was right.
  NOTE: streams=2 was wrong on the H100 (relative error 0.3-2.3) while its
  two compute warpgroups shared one cross-warp reduction scratch; with one
  each (decode_mosaic_q8._behind_pads) it is right there (2.5e-3,
  2026-12-07, docs/benchmarks.md)."""
  quantized = quantization.is_quantized(kv_cache)
  values = quantization.values_of(kv_cache)
  hkv, head_dim = values.shape[1], values.shape[4]
  itemsize, group = q.dtype.itemsize, q.shape[1] // hkv
  cols = q_cols(group) if quantized else 0
  eight_bit_only = (config.qk_8bit or config.v_converters != 1
                    or config.streams != 1 or config.ctas != 0
                    or config.issuers != 1 or config.dynamic)
  qk_ok = ((not config.qk_8bit or values.dtype == jnp.int8)
           and hkv % config.streams == 0)
  return (itemsize == 2 and (quantized or not eight_bit_only) and qk_ok
          and (q.dtype == jnp.bfloat16 if quantized else q.dtype == values.dtype)
          and head_dim % 64 == 0 and group <= ROWS_PER_WG
          and config.smem_bytes(head_dim, itemsize, cols) <= SMEM_BYTES)


def combine_splits(part, lse):
  """Merges normalised split outputs part [b, hkv, splits, rows, d] by their
  log2-sum-exp lse [b, hkv, splits, rows] (NEG_BIG: empty) -> [b, hkv, rows, d]."""
  live = lse > kernel.NEG_BIG / 2
  top = jnp.max(jnp.where(live, lse, -jnp.inf), axis=2, keepdims=True)
  w = jnp.where(live, jnp.exp2(lse - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
  den = w.sum(axis=2)
  num = (part * w[..., None]).sum(axis=2)
  return jnp.where(den[..., None] > 0,
                   num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)


@functools.partial(jax.jit, static_argnames=("scale", "config", "interpret"))
def decode_mosaic(q, kv_cache, block_tables, lengths, *, scale,
                  config: DecodeMosaicConfig = DecodeMosaicConfig(),
                  interpret=False):
  """Runs the kernel; arguments as `paged_decode_attention`, pre-validated.

  Requires supports(q, kv_cache, config).
  """
  batch, hq, head_dim = q.shape
  hkv = quantization.values_of(kv_cache).shape[1]
  group = hq // hkv
  quantized = quantization.is_quantized(kv_cache)
  cfg = kernel.Static(
      block_kv=config.block_kv, stages=config.stages,
      num_splits=config.num_splits,
      q_rows=-(-group // ALIGN) * ALIGN,
      qk_8bit=config.qk_8bit, v_converters=config.v_converters,
      streams=config.streams, ctas=config.ctas, issuers=config.issuers,
      dynamic=config.dynamic,
      p_in_regs=not interpret, max_blocks=block_tables.shape[1],
      scale=scale)
  qp = q.reshape(batch, hkv, group, head_dim)
  if cfg.q_rows != group:
    qp = jnp.pad(qp, ((0, 0), (0, 0), (0, cfg.q_rows - group), (0, 0)))
  run = q8.run_kernel if quantized else run_kernel
  out = run(qp, kv_cache, block_tables, lengths, cfg, interpret)
  if cfg.num_splits > 1:
    out = combine_splits(out[0], out[1][..., :cfg.q_rows]).astype(q.dtype)
  return out[:, :, :group].reshape(batch, hq, head_dim)


def run_kernel(qp, kv_cache, block_tables, lengths, cfg: kernel.Static,
               interpret=False):
  """The kernel alone: qp [batch, hkv, q_rows, d] -> the output in that shape,
  or (partials [.., splits, q_rows, d] f32, lse [.., splits, 64] f32)."""
  batch, hkv, rows, head_dim = qp.shape
  if cfg.num_splits == 1:
    out_type = jax.ShapeDtypeStruct(qp.shape, qp.dtype)
  else:
    part = (batch, hkv, cfg.num_splits)
    out_type = (jax.ShapeDtypeStruct(part + (rows, head_dim), jnp.float32),
                jax.ShapeDtypeStruct(part + (ROWS_PER_WG,), jnp.float32))
  return plgpu.kernel(
      functools.partial(_entry, cfg=cfg),
      out_type=out_type,
      grid=(batch, hkv, cfg.num_splits),
      grid_names=("row", "head", "split"),
      num_threads=2,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret_params(interpret, 2),
      kernel_name="paged_decode_mosaic",
  )(lengths, block_tables.reshape(-1), qp, kv_cache)


def _entry(len_ref, bt_ref, q_ref, kv_ref, *out_refs, cfg: kernel.Static):
  """Allocates shared memory and barriers, then splits by warpgroup.

  len_ref int32 [batch]; bt_ref int32 [batch * max_blocks]; q_ref [batch,
  hkv, q_rows, d]; kv_ref [num_blocks, hkv, 2, block_size, d] (all GMEM).
  """
  head_dim, dtype = q_ref.shape[-1], q_ref.dtype
  block_size = kv_ref.shape[3]
  copies = copies_per_stage(block_size, cfg)

  def body(*bufs, **bars):
    span = kernel.Span(len_ref, cfg, block_size)
    wg = jax.lax.axis_index("wg")
    pl.when(wg == 0)(
        lambda: kernel.consumer(span, q_ref, out_refs, bufs, bars, cfg))
    pl.when(wg == 1)(
        lambda: producer(span, bt_ref, kv_ref, bufs[-2:], bars, cfg))

  pl.run_scoped(
      body, *kernel.buffers(cfg, head_dim, dtype, smem_buffer),
      q=plgpu.Barrier(num_arrivals=1),
      k_ready=plgpu.Barrier(num_arrivals=copies, num_barriers=cfg.stages),
      v_ready=plgpu.Barrier(num_arrivals=copies, num_barriers=cfg.stages),
      v_tail=plgpu.Barrier(num_arrivals=copies),
      k_free=plgpu.Barrier(num_arrivals=1, num_barriers=cfg.stages),
      v_free=plgpu.Barrier(num_arrivals=1, num_barriers=cfg.stages),
      collective_axes="wg")
