"""Paged prefill attention as a Pallas Mosaic GPU kernel (Hopper).

Same contract as prefill_triton.py: the packed tokens are cut into query tiles
of one sequence (prefill_tiles.py), the GQA group's heads folded into a tile's
rows, and each (tile, KV head) CTA walks its sequence's cache up to the tile's
last token. The kernel body and its pipeline are in prefill_mosaic_kernel.py.

Supported: 16-bit caches (bf16, f16) with head_dim a multiple of 64 (up to
256 with the default tiling: shared memory) and GQA groups of at most 1/8 of
a tile's rows (16 with 128 rows: a head's tokens in a tile are one TMA box of
whole 8-row tiles); `supports()` says so and prefill.py sends everything else
(float32 caches, head_dim 32/96/512, groups over 16) to the Triton kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import prefill_tiles
from pallas_kernels import quantization
from pallas_kernels.prefill_mosaic_kernel import ALIGN
from pallas_kernels.prefill_mosaic_kernel import ROWS_PER_WG
from pallas_kernels.prefill_mosaic_kernel import Static
from pallas_kernels.prefill_mosaic_kernel import Tile
from pallas_kernels.prefill_mosaic_kernel import consumer
from pallas_kernels.prefill_mosaic_memory import copies_per_stage
from pallas_kernels.prefill_mosaic_memory import producer

SMEM_BYTES = 227 * 1024  # per-CTA dynamic shared memory on H100/H200


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  """Tiling of the Mosaic prefill kernel (static)."""
  block_kv: int = 128  # cache tokens per pipeline step: 64, 128 or 256
  stages: int = 2  # K/V stages in flight, >= 2
  compute_wgs: int = 2  # compute warpgroups; a CTA owns 64 * this query rows
  pingpong: bool = True  # alternate the two compute warpgroups' wgmma
  p_in_regs: bool = True  # P V from registers (False: P through SMEM)

  def __post_init__(self):
    # NOTE: a power of two, so a step is whole blocks or a slice of one.
    if self.block_kv not in (64, 128, 256):
      raise ValueError(f"block_kv must be 64, 128 or 256, got {self.block_kv}")
    if self.stages < 2:
      raise ValueError(f"stages must be >= 2, got {self.stages}")
    if self.compute_wgs not in (1, 2):
      raise ValueError(f"compute_wgs must be 1 or 2, got {self.compute_wgs}")

  def smem_bytes(self, head_dim: int, itemsize: int) -> int:
    """Shared memory of the Q/O tiles and the K/V stages."""
    rows = self.compute_wgs * ROWS_PER_WG
    p = 0 if self.p_in_regs else rows * self.block_kv
    return (rows * head_dim + p
            + 2 * self.stages * self.block_kv * head_dim) * itemsize


def supports(q: jax.Array, kv_cache, config: MosaicConfig) -> bool:
  """Whether the Mosaic kernel runs these operands with `config` (a 16-bit
  array cache, head_dim % 64 == 0, groups <= rows / 8, shared memory fits);
  else Triton."""
  if quantization.is_quantized(kv_cache):
    return False
  itemsize = kv_cache.dtype.itemsize
  return (itemsize == 2 and q.dtype == kv_cache.dtype
          and shape_supported(q, kv_cache, config)
          and config.smem_bytes(kv_cache.shape[4], itemsize) <= SMEM_BYTES)


def shape_supported(q: jax.Array, kv_cache, config: MosaicConfig) -> bool:
  """The kernel's shape limits, for a 16- or 8-bit cache: head_dim % 64 ==
  0 and a padded GQA group of at most 1/8 of a tile's rows."""
  _, hkv, _, _, head_dim = quantization.values_of(kv_cache).shape
  group_pad = pl.next_power_of_2(q.shape[1] // hkv)
  return head_dim % 64 == 0 and group_pad * 8 <= config.compute_wgs * ROWS_PER_WG


def smem_buffer(shape, dtype):
  """A shared-memory buffer in the swizzled tiling wgmma and TMA expect."""
  itemsize = jnp.dtype(dtype).itemsize
  swizzle = plgpu.find_swizzle(shape[-1] * itemsize * 8)
  return plgpu.SMEM(shape, dtype, transforms=(
      plgpu.TilingTransform((8, swizzle // itemsize)),
      plgpu.SwizzleTransform(swizzle)))


def _entry(rows_ref, pos_ref, kvlen_ref, seq_ref, qrow_ref, shift_ref, bt_ref,
           q_ref, kv_ref, o_ref, *, cfg: Static):
  """Allocates shared memory and barriers, then splits by warpgroup.

  rows/pos/kvlen/seq/qrow/shift_ref: int32 [n_tiles] tile metadata (GMEM);
    qrow in units of ALIGN rows.
  bt_ref: int32 [num_seqs * max_blocks] flattened block tables (GMEM).
  q_ref: [rows, hkv, group_pad, head_dim] (prefill_tiles.QBoxes).
  o_ref: [n_tiles * block_q, hkv, group_pad, head_dim] tile slots.
  kv_ref: [num_blocks, hkv, 2, block_size, head_dim] the paged cache.
  """
  head_dim, dtype = q_ref.shape[-1], q_ref.dtype
  wgs, stages = cfg.compute_wgs, cfg.stages
  copies = copies_per_stage(kv_ref.shape[3], cfg)

  def body(qo, p, k, v, **bars):
    tile = Tile((rows_ref, pos_ref, kvlen_ref, seq_ref, qrow_ref, shift_ref),
                cfg, kv_ref.shape[3])
    wg = jax.lax.axis_index("wg")
    pl.when(wg < wgs)(
        lambda: consumer(tile, q_ref, o_ref, (qo, p, k, v), bars, cfg))
    pl.when(wg == wgs)(
        lambda: producer(tile, bt_ref, kv_ref, (k, v), bars, cfg))

  pl.run_scoped(
      body,
      smem_buffer((wgs, ROWS_PER_WG, head_dim), dtype),  # Q, then O, per warpgroup
      None if cfg.p_in_regs else smem_buffer((wgs, ROWS_PER_WG, cfg.block_kv), dtype),
      smem_buffer((stages, cfg.block_kv, head_dim), dtype),  # K stages
      smem_buffer((stages, cfg.block_kv, head_dim), dtype),  # V stages
      q=plgpu.Barrier(num_arrivals=ROWS_PER_WG // cfg.box_rows,
                      num_barriers=wgs),
      k_ready=plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
      v_ready=plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
      v_tail=plgpu.Barrier(num_arrivals=copies),
      k_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
      v_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
      sched=plgpu.Barrier(num_arrivals=wgs),
      collective_axes="wg")


def interpret_params(interpret, num_warpgroups: int):
  """Mosaic GPU interpret mode needs InterpretGPUParams, not `True`.

  NOTE: in JAX 0.11.2 `interpret=True` selects the generic HLO interpreter,
  which has no rule for Mosaic GPU primitives (copy_gmem_to_smem, barriers,
  wgmma); InterpretGPUParams runs the GPU simulator (one CPU thread per
  warpgroup, barriers, TMA) instead. Uninitialised shared memory reads as NaN
  there. Each simulated warpgroup blocks an XLA CPU pool thread while it waits
  on a barrier, so a pool of <= num_warpgroups threads deadlocks: the pool
  size comes from PJRT_NPROC / NPROC (else the core count) when the CPU
  client starts; tests/conftest.py sets it.
  """
  if not interpret:
    return None
  nproc = os.environ.get("PJRT_NPROC") or os.environ.get("NPROC")
  pool = int(nproc) if nproc else (os.cpu_count() or 1)
  if pool < num_warpgroups + 2:
    raise RuntimeError(
        f"Mosaic GPU interpret mode needs >= {num_warpgroups + 2} XLA CPU "
        f"threads (has {pool}); set PJRT_NPROC=8 before JAX starts")
  if isinstance(interpret, plgpu.InterpretGPUParams):
    return interpret
  return plgpu.InterpretGPUParams()


@functools.partial(jax.jit,
                   static_argnames=("scale", "config", "interpret"))
def prefill_mosaic(q, kv_cache, block_tables, cu_q_lens, kv_lens, *, scale,
                   config: MosaicConfig = MosaicConfig(), interpret=False):
  """Runs the kernel; arguments as `paged_prefill_attention`, pre-validated.

  Requires supports(q, kv_cache, config). `interpret` may also be an
  InterpretGPUParams (e.g. with detect_races=True).
  """
  num_tokens, hq, _ = q.shape
  cfg = static_config(q, kv_cache, block_tables, scale, config, interpret)
  tiles, boxes, qk = kernel_inputs(q, kv_cache, cu_q_lens, kv_lens, cfg)
  out = run_kernel(tiles, boxes, block_tables, qk, kv_cache, cfg, interpret)
  return prefill_tiles.scatter_slots(out, cu_q_lens, num_tokens,
                                     hq // kv_cache.shape[1], tiles,
                                     boxes.shift, ALIGN)


def kernel_inputs(q, kv_cache, cu_q_lens, kv_lens, cfg: Static):
  """(tiles, QBoxes, Q rows [rows, hkv, group_pad, d]) for run_kernel."""
  num_tokens, hq, head_dim = q.shape
  hkv = kv_cache.shape[1]
  tiles = prefill_tiles.make_tiles(cu_q_lens, kv_lens, num_tokens, cfg.block_q,
                                   ALIGN)
  # NOTE: with a power-of-two group the kernel reads q where it lies (a view
  # [T, hkv, group, d]); else the heads are padded into gathered tile slots.
  # A TMA box into 8-row SMEM tiles starts at a multiple of 8 rows (ALIGN).
  direct = (hq // hkv == cfg.group_pad and num_tokens >= cfg.block_q
            and num_tokens % ALIGN == 0)
  boxes = prefill_tiles.q_boxes(tiles, num_tokens, cfg.block_q, direct)
  qk = (q.reshape(num_tokens, hkv, cfg.group_pad, head_dim) if direct else
        prefill_tiles.gather_slots(q, tiles, hkv, cfg.group_pad, cfg.block_q))
  return tiles, boxes, qk


def static_config(q, kv_cache, block_tables, scale, config: MosaicConfig,
                  interpret=False) -> Static:
  """The kernel body's compile-time facts for these operands and tiling."""
  wgs = config.compute_wgs
  return Static(block_kv=config.block_kv, stages=config.stages,
                compute_wgs=wgs, pingpong=config.pingpong and wgs == 2,
                p_in_regs=config.p_in_regs and not interpret,
                group_pad=pl.next_power_of_2(q.shape[1] // kv_cache.shape[1]),
                max_blocks=block_tables.shape[1], scale=scale)


def run_kernel(tiles: prefill_tiles.Tiles, boxes: prefill_tiles.QBoxes,
               block_tables, qk, kv_cache, cfg: Static, interpret=False):
  """The kernel alone: Q rows qk [rows, hkv, gp, d] read as `boxes` say ->
  outputs in tile slots [tiles * block_q, hkv, gp, d]."""
  wgs = cfg.compute_wgs
  n_tiles = tiles.seq.shape[0]
  return plgpu.kernel(
      functools.partial(_entry, cfg=cfg),
      out_type=jax.ShapeDtypeStruct((n_tiles * cfg.block_q,) + qk.shape[1:],
                                    qk.dtype),
      grid=(n_tiles, kv_cache.shape[1]),
      grid_names=("tile", "head"),
      num_threads=wgs + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret_params(interpret, wgs + 1),
      kernel_name="paged_prefill_mosaic",
  )(tiles.rows, tiles.first_pos, tiles.kv_len, tiles.seq,
    boxes.q_row // ALIGN, boxes.shift, block_tables.reshape(-1), qk, kv_cache)
