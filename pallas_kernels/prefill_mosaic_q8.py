"""8-bit caches (int8, float8_e4m3 bits in uint8) in the Mosaic GPU prefill.

The compute warpgroups are the 16-bit kernel's (prefill_mosaic_kernel
.consumer, unchanged) over 16-bit K/V stages. Here the memory warpgroup fills
those stages: per step it copies the tile's 8-bit K and V and their scales
by TMA into a ring of `ring` 8-bit stages (that many steps ahead), and
converts each into the step's 16-bit stage, dequantized (a value times its
token's scale). Barriers:

  k8_ready[r] / v8_ready[r]  8-bit stage r landed (a copy per KV block, one
                             of the scales)
  k_ready[s] / v_ready[s]    16-bit stage s written and fenced (the memory
                             warpgroup's one arrival)
  k_free, v_free, sched      as in prefill_mosaic_kernel.py

The 16-bit type is decode_mosaic_q8_compute.wide_dtype: bf16 for int8, f16
for e4m3 (one cvt per two values); q is clamped and cast to it, the output
cast back. Scales are gathered in each sequence's token order first, zero
at and past its length (decode_mosaic_q8.gather_scales: a TMA copy per
block's scales faulted on the H200).

NOTE: cache slots at or past a sequence's length may hold anything (NaN
values and scales in the tests). The conversion zeroes V's rows there (0 x
NaN would poison P V); K's rows there are only read by keys the causal mask
replaces. So no step needs the 16-bit kernel's v_tail.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import decode_mosaic_q8
from pallas_kernels import decode_mosaic_q8_compute as q8_compute
from pallas_kernels import prefill_mosaic
from pallas_kernels import prefill_tiles
from pallas_kernels import quantization
from pallas_kernels.decode_mosaic_q8_stages import SCALES  # gather_scales's
from pallas_kernels.prefill_mosaic import smem_buffer
from pallas_kernels.prefill_mosaic_kernel import ALIGN
from pallas_kernels.prefill_mosaic_kernel import Tile
from pallas_kernels.prefill_mosaic_kernel import consumer
from pallas_kernels.prefill_mosaic_memory import block_ids
from pallas_kernels.prefill_mosaic_memory import copies_per_stage
from pallas_kernels.prefill_mosaic_memory import issue_copies

# NOTE: the memory warpgroup holds a 64-row chunk of 8-bit values and its
# 16-bit conversion (32 + 32 registers a thread at head_dim 128); the two
# compute warpgroups keep (504 - 88) / 2 = 208 (compute_registers).
MEMORY_REGISTERS = 88
CHUNK = q8_compute.CHUNK_ROWS  # rows converted at a time (a WGMMA layout tile)
LAYOUT, KEYS = q8_compute.LAYOUT, q8_compute.KEYS
ALIGN_SLACK = 4096  # alignment and barriers (3,176 B at head_dim 128, jax 0.11.2)


def smem_bytes(config, head_dim: int, ring: int) -> int:
  """Shared memory of the 16-bit kernel's buffers and a ring of `ring` 8-bit
  K and V stages with their scales."""
  wide = config.smem_bytes(head_dim, 2)
  return wide + 2 * ring * config.block_kv * (head_dim + 2) + ALIGN_SLACK


def ring_stages(config, head_dim: int) -> int:
  """8-bit stages: two where shared memory holds them, else one."""
  return 2 if smem_bytes(config, head_dim, 2) <= prefill_mosaic.SMEM_BYTES else 1


def supports(q: jax.Array, kv_cache, config) -> bool:
  """An 8-bit cache (int8 or e4m3 bits) and a bf16 q, under the 16-bit
  kernel's limits on head_dim, groups and shared memory (one 8-bit stage)."""
  if not quantization.is_quantized(kv_cache):
    return False
  values = kv_cache.values
  return (q.dtype == jnp.bfloat16 and values.dtype in (jnp.int8, jnp.uint8)
          and prefill_mosaic.shape_supported(q, kv_cache, config)
          and smem_bytes(config, values.shape[4], 1) <= prefill_mosaic.SMEM_BYTES)


@functools.partial(jax.jit, static_argnames=("scale", "config", "interpret"))
def prefill_mosaic_q8(q, kv_cache, block_tables, cu_q_lens, kv_lens, *, scale,
                      config=prefill_mosaic.MosaicConfig(), interpret=False):
  """As prefill_mosaic.prefill_mosaic over a QuantizedKV; requires
  supports(q, kv_cache, config)."""
  values = kv_cache.values
  num_tokens, hq, head_dim = q.shape
  cfg = prefill_mosaic.static_config(q, values, block_tables, scale, config,
                                     interpret)
  cfg = dataclasses.replace(cfg, memory_registers=MEMORY_REGISTERS)
  wide = decode_mosaic_q8.wide_q(q, values.dtype)
  tiles, boxes, qk = prefill_mosaic.kernel_inputs(wide, values, cu_q_lens,
                                                  kv_lens, cfg)
  scales = decode_mosaic_q8.gather_scales(kv_cache.scales, block_tables,
                                          kv_lens, cfg.block_kv)
  ring = ring_stages(config, head_dim)
  short = ring * cfg.block_kv - scales.shape[-1]  # the first `ring` fetches
  if short > 0:  # are indexed statically (taken only for steps that exist)
    scales = jnp.pad(scales, ((0, 0),) * 3 + ((0, short),))
  wgs = cfg.compute_wgs
  out = plgpu.kernel(
      functools.partial(_entry, cfg=cfg, ring=ring),
      out_type=jax.ShapeDtypeStruct((tiles.seq.shape[0] * cfg.block_q,)
                                    + qk.shape[1:], qk.dtype),
      grid=(tiles.seq.shape[0], values.shape[1]),
      grid_names=("tile", "head"),
      num_threads=wgs + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=prefill_mosaic.interpret_params(interpret, wgs + 1),
      kernel_name="paged_prefill_mosaic_q8",
  )(tiles.rows, tiles.first_pos, tiles.kv_len, tiles.seq,
    boxes.q_row // ALIGN, boxes.shift, block_tables.reshape(-1), qk, values,
    scales)
  out = prefill_tiles.scatter_slots(out, cu_q_lens, num_tokens,
                                    hq // values.shape[1], tiles, boxes.shift,
                                    ALIGN)
  return out.astype(q.dtype)


def _entry(rows_ref, pos_ref, kvlen_ref, seq_ref, qrow_ref, shift_ref, bt_ref,
           q_ref, values_ref, scales_ref, o_ref, *, cfg, ring: int):
  """Allocates shared memory and barriers, then splits by warpgroup.

  As prefill_mosaic._entry, with values_ref [num_blocks, hkv, 2, block_size,
  d] int8 or uint8 and scales_ref [seqs, hkv, 2, tokens] f16
  (gather_scales); q_ref and o_ref in the 16-bit type (GMEM).
  """
  head_dim, wide = q_ref.shape[-1], q_ref.dtype
  wgs, stages, block_kv = cfg.compute_wgs, cfg.stages, cfg.block_kv
  copies = copies_per_stage(values_ref.shape[3], cfg)

  def body(qo, p, k, v, k8, v8, k_scales, v_scales, **bars):
    tile = Tile((rows_ref, pos_ref, kvlen_ref, seq_ref, qrow_ref, shift_ref),
                cfg, values_ref.shape[3])
    wg = lax.axis_index("wg")
    pl.when(wg < wgs)(
        lambda: consumer(tile, q_ref, o_ref, (qo, p, k, v), bars, cfg))
    rings = ((k8, k_scales, k), (v8, v_scales, v))
    pl.when(wg == wgs)(lambda: producer(tile, bt_ref, values_ref, scales_ref,
                                        rings, bars, cfg, ring))

  storage = values_ref.dtype
  pl.run_scoped(
      body,
      smem_buffer((wgs, 64, head_dim), wide),  # Q, then O, per warpgroup
      None if cfg.p_in_regs else smem_buffer((wgs, 64, block_kv), wide),
      smem_buffer((stages, block_kv, head_dim), wide),  # K stages
      smem_buffer((stages, block_kv, head_dim), wide),  # V stages
      smem_buffer((ring, block_kv, head_dim), storage),  # 8-bit K ring
      smem_buffer((ring, block_kv, head_dim), storage),  # 8-bit V ring
      plgpu.SMEM((ring, block_kv), SCALES),
      plgpu.SMEM((ring, block_kv), SCALES),
      q=plgpu.Barrier(num_arrivals=64 // cfg.box_rows, num_barriers=wgs),
      k_ready=plgpu.Barrier(num_arrivals=1, num_barriers=stages),
      v_ready=plgpu.Barrier(num_arrivals=1, num_barriers=stages),
      k_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
      v_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
      sched=plgpu.Barrier(num_arrivals=wgs),
      k8_ready=plgpu.Barrier(num_arrivals=copies + 1, num_barriers=ring),
      v8_ready=plgpu.Barrier(num_arrivals=copies + 1, num_barriers=ring),
      collective_axes="wg")


def producer(tile: Tile, bt_ref, values_ref, scales_ref, rings, bars, cfg,
             ring: int):
  """Memory warpgroup: the 8-bit stages by TMA `ring` steps ahead, each
  converted into the 16-bit stage once the compute warpgroups freed it.

  rings: (8-bit stages [ring, block_kv, d], their scales [ring, block_kv]
  f16, 16-bit stages [stages, block_kv, d]) for K, then V (SMEM).
  """
  plgpu.set_max_registers(MEMORY_REGISTERS, action="decrease")
  fetch = functools.partial(_fetch, tile, bt_ref, values_ref, scales_ref, rings,
                            bars, cfg, ring)
  def first(j):  # one of the first `ring` steps' copies
    for which in (0, 1):
      fetch(j, which)

  for j in range(ring):
    pl.when(j < tile.num_steps)(functools.partial(first, j))

  @pl.loop(0, tile.num_steps)
  def _produce(step):
    for which in (0, 1):
      _land(tile, rings[which], bars, NAMES[which], cfg, ring, step)
      pl.when(step + ring < tile.num_steps)(
          lambda w=which: fetch(step + ring, w))

  # Observe the last stages' releases (every phase a thread waits on must be
  # observed; the interpreter checks it).
  @pl.loop(jnp.maximum(tile.num_steps - cfg.stages, 0), tile.num_steps)
  def _drain(step):
    slot = lax.rem(step, cfg.stages)
    plgpu.barrier_wait(bars["k_free"].at[slot])
    plgpu.barrier_wait(bars["v_free"].at[slot])


NAMES = ("k", "v")  # the barriers' prefixes of K (0) and V (1)


def _fetch(tile: Tile, bt_ref, values_ref, scales_ref, rings, bars, cfg,
           ring: int, step, which: int):
  """TMA of `step`'s 8-bit K (which 0) or V (1) blocks and scales into ring
  stage step % ring, landing on its {k,v}8_ready barrier."""
  values8, scales8, _ = rings[which]
  at, ready = lax.rem(step, ring), bars[f"{NAMES[which]}8_ready"]
  ids = block_ids(tile, bt_ref, values_ref.shape[3], cfg, step)
  issue_copies(tile, values_ref, ids, which, values8.at[at], ready.at[at])
  plgpu.copy_gmem_to_smem(
      scales_ref.at[tile.seq, tile.head, which,
                    pl.ds(step * cfg.block_kv, cfg.block_kv)],
      scales8.at[at], ready.at[at])


def _land(tile: Tile, stages, bars, name: str, cfg, ring: int, step):
  """`step`'s 8-bit stage (landed) converted into its 16-bit stage (freed),
  V's rows past the tile's end zeroed, then fenced and announced.

  stages: (8-bit values, scales, 16-bit stages) of K (name "k") or V ("v").
  """
  values8, scales8, wide = stages
  slot, at = lax.rem(step, cfg.stages), lax.rem(step, ring)
  plgpu.barrier_wait(bars[f"{name}8_ready"].at[at])
  pl.when(step >= cfg.stages)(
      lambda: plgpu.barrier_wait(bars[f"{name}_free"].at[slot]))
  stage = (values8.at[at], scales8.at[at], wide.at[slot])
  if name == "k":
    _convert(*stage, None)
  else:
    valid = tile.end - step * cfg.block_kv  # V rows to keep
    pl.when(valid >= cfg.block_kv)(lambda: _convert(*stage, None))
    pl.when(valid < cfg.block_kv)(lambda: _convert(*stage, valid))
  # NOTE: fences the 16-bit writes for wgmma and ends every thread's reads of
  # the 8-bit stage before its refill (a warpgroup barrier).
  plgpu.commit_smem()
  plgpu.barrier_arrive(bars[f"{name}_ready"].at[slot])


def _convert(src, scales, dst, valid):
  """dst = src's numbers x their row's scale in dst's 16-bit type, zero from
  row `valid` on (None: all kept).

  src [block_kv, d] 8-bit, scales [block_kv] f16, dst [block_kv, d] 16-bit
  (SMEM).
  """
  for r0 in range(0, src.shape[0], CHUNK):
    rows = pl.ds(r0, CHUNK)
    x = q8_compute.widen(plgpu.load(src.at[rows], layout=LAYOUT), dst.dtype)
    scale = plgpu.load(scales.at[rows], layout=KEYS).astype(dst.dtype)
    y = x * lax.broadcast_in_dim(scale, x.shape, [0])
    if valid is not None:
      row = plgpu.broadcasted_iota(jnp.int32, x.shape, 0, layout=LAYOUT)
      y = jnp.where(row + r0 < valid, y, jnp.zeros_like(y))
    dst.at[rows][...] = y
