"""The Mosaic GPU prefill kernel's memory warpgroup: K/V stages by TMA.

Per pipeline step it gathers `block_kv` cache tokens of the tile's KV head:
one TMA copy per KV block (or per slice of a block larger than `block_kv`),
the block index read from the block table in global memory, into stage
`step % stages` of the K and V buffers, after the compute warpgroups freed
it. A tile's last step over a partial last block lands its V on `v_tail`
and zeroes the unwritten rows first (prefill_mosaic_kernel.py's NOTE).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

if TYPE_CHECKING:
  from pallas_kernels.prefill_mosaic_kernel import Static, Tile

FIX_TILE = 64  # rows/cols of the chunks the memory warpgroup zeroes
MEMORY_REGISTERS = 40  # per thread of the memory warpgroup (TMA issue only)


def producer(tile: Tile, bt_ref, kv_ref, bufs, bars, cfg: Static):
  """Memory warpgroup: TMA K/V stages ahead of the compute warpgroups."""
  plgpu.set_max_registers(MEMORY_REGISTERS, action="decrease")
  k_smem, v_smem = bufs  # each [stages, block_kv, head_dim] (SMEM, swizzled)

  @pl.loop(0, tile.num_steps)
  def _produce(step):
    slot = lax.rem(step, cfg.stages)
    refill = step >= cfg.stages
    issue = functools.partial(issue_copies, tile, kv_ref, block_ids(
        tile, bt_ref, kv_ref.shape[3], cfg, step))
    pl.when(refill)(lambda: plgpu.barrier_wait(bars["k_free"].at[slot]))
    issue(0, k_smem.at[slot], bars["k_ready"].at[slot])
    pl.when(refill)(lambda: plgpu.barrier_wait(bars["v_free"].at[slot]))
    tail = (step == tile.num_steps - 1) & tile.dirty_tail
    pl.when(~tail)(lambda: issue(1, v_smem.at[slot], bars["v_ready"].at[slot]))

    @pl.when(tail)
    def _clean_tail():
      issue(1, v_smem.at[slot], bars["v_tail"])
      plgpu.barrier_wait(bars["v_tail"])
      _zero_rows(v_smem.at[slot],
                 tile.end - tile.first_kv - step * cfg.block_kv)
      plgpu.commit_smem()  # generic-proxy writes before wgmma reads them
      for _ in range(copies_per_stage(kv_ref.shape[3], cfg)):
        plgpu.barrier_arrive(bars["v_ready"].at[slot])

  # Observe the last stages' releases too (every phase of a barrier a thread
  # waits on must be observed; the interpreter checks it).
  @pl.loop(jnp.maximum(tile.num_steps - cfg.stages, 0), tile.num_steps)
  def _drain(step):
    slot = lax.rem(step, cfg.stages)
    plgpu.barrier_wait(bars["k_free"].at[slot])
    plgpu.barrier_wait(bars["v_free"].at[slot])


def copies_per_stage(block_size: int, cfg: Static) -> int:
  """TMA copies per K (or V) stage: one per block, or per block slice."""
  return cfg.block_kv // min(block_size, cfg.block_kv)


def block_ids(tile: Tile, bt_ref, block_size: int, cfg: Static, step):
  """(cache block, row offset) of each copy of a step, from the block table.

  bt_ref int32 [seqs * max_blocks] (GMEM). Blocks past the tile's end re-read
  its last block (masked anyway).
  """
  sub = cfg.block_kv // copies_per_stage(block_size, cfg)  # tokens per copy
  ids = []
  for j in range(cfg.block_kv // sub):
    pos = tile.first_kv + step * cfg.block_kv + j * sub
    page = jnp.minimum(lax.div(pos, block_size), tile.last_page)
    offset = lax.rem(pos, block_size) if sub < block_size else 0
    ids.append((bt_ref[tile.table_base + page], offset))
  return ids


def issue_copies(tile: Tile, kv_ref, ids, which, dst, barrier):
  """TMA of K (which=0) or V (1) of a step's blocks `ids` into dst.

  kv_ref [blocks, hkv, 2, bs, d...] (GMEM); dst [block_kv, d...] (SMEM): the
  cache and a stage, or an 8-bit cache's scales [blocks, hkv, 2, bs] and
  [block_kv].
  """
  sub = dst.shape[0] // len(ids)
  for j, (block, offset) in enumerate(ids):
    plgpu.copy_gmem_to_smem(
        kv_ref.at[block, tile.head, which, pl.ds(offset, sub)],
        dst.at[pl.ds(j * sub, sub)], barrier)


def _zero_rows(v_ref, valid):
  """Zeroes rows >= valid of v_ref [block_kv, head_dim] (SMEM, swizzled)."""
  block_kv, head_dim = v_ref.shape
  for r0 in range(0, block_kv, FIX_TILE):
    for c0 in range(0, head_dim, FIX_TILE):
      chunk = v_ref.at[pl.ds(r0, FIX_TILE), pl.ds(c0, FIX_TILE)]
      row = plgpu.broadcasted_iota(jnp.int32, (FIX_TILE, FIX_TILE), 0,
                                   layout=plgpu.Layout.WGMMA) + r0
      x = chunk[...]
      chunk[...] = jnp.where(row < valid, x, jnp.zeros_like(x))
