"""The Mosaic GPU (Hopper) paged prefill kernel body: one CTA per (tile, KV head).

Warp-specialised, as JAX's `attention_mgpu`: `compute_wgs` compute warpgroups
own 64 query rows each (wgmma M = 64) and one memory warpgroup streams the
tile's K/V through shared memory (prefill_mosaic_memory.py: one TMA copy per
KV block, through the block table, into stage `step % stages`). Barriers:

  k_ready[s] / v_ready[s]  TMA landed in stage s (one arrival per copy)
  k_free[s] / v_free[s]    every compute warpgroup is done with stage s
  v_tail                   the last step's V copies (see below)
  sched                    ping-pong of the compute warpgroups' wgmma issue

Compute warpgroups: S = Q Kᵀ (wgmma, f32 accumulator), causal mask on the
diagonal steps only, exp2 online softmax in f32 registers, O += P V (wgmma
with P in registers). Tile row R is head R // block_q of the KV head's GQA
group and token R % block_q of the tile, so each head's tokens are one strided
TMA box (`_boxes`) of Q [rows, hkv, group_pad, d] (q itself, or tile slots:
prefill_tiles.QBoxes) and of the output's tile slots; no transpose in memory.

NOTE: cache slots at or past a sequence's length may hold anything (NaN in
the tests), and 0 * NaN poisons P V. Only a tile's last step can read them,
and only if the tile's last block is the sequence's last and is partial
(`Tile.dirty_tail`); then that step's V copies land on `v_tail`, the memory
warpgroup zeroes the rows at positions >= the tile's end in shared memory,
fences, and then arrives on v_ready itself, so the compute warpgroups see a
clean tile.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.prefill_mosaic_memory import MEMORY_REGISTERS

ROWS_PER_WG = 64  # wgmma M of one warpgroup
NEG_BIG = -1e30
LOG2E = math.log2(math.e)
ALIGN = 8  # rows of a swizzled SMEM tile


@dataclasses.dataclass(frozen=True)
class Static:
  """Compile-time facts the kernel body needs."""
  block_kv: int  # cache tokens per pipeline step: 64, 128 or 256
  stages: int  # K/V buffers in flight
  compute_wgs: int  # 1 or 2 compute warpgroups (64 rows each)
  pingpong: bool  # schedule barrier between two compute warpgroups
  # P V with P in registers accumulating in place (as attention_mgpu), else P
  # stored to shared memory and a fresh accumulator added in registers.
  # NOTE: JAX 0.11.2's GPU interpreter simulates wgmma only with both operands
  # in shared memory and a zero-initialised accumulator, so interpret mode
  # runs p_in_regs=False.
  p_in_regs: bool
  group_pad: int  # GQA group padded to a power of two (rows per token)
  max_blocks: int  # block-table row length
  scale: float  # softmax scale
  # the memory warpgroup's registers a thread (more where it converts an
  # 8-bit cache: prefill_mosaic_q8.py); the compute warpgroups get the rest
  memory_registers: int = MEMORY_REGISTERS

  @property
  def rows(self) -> int:
    return ROWS_PER_WG * self.compute_wgs

  @property
  def block_q(self) -> int:
    """Tokens per tile: a tile's rows are group_pad heads x block_q tokens."""
    return self.rows // self.group_pad

  @property
  def box_rows(self) -> int:
    """Rows of one Q/O TMA box: one head's tokens, within one warpgroup."""
    return min(self.block_q, ROWS_PER_WG)


def _cdiv(a, b: int):
  return lax.div(a + (b - 1), b)  # NOTE: a >= 0, so no floor/trunc difference


class Tile:
  """Scalars of one CTA's tile, read from global memory by every warpgroup."""

  def __init__(self, meta, cfg: Static, block_size: int):
    # each int32 [n_tiles] (GMEM); see prefill_mosaic.QBoxes for the last two
    rows_ref, pos_ref, kvlen_ref, seq_ref, qrow_ref, shift_ref = meta
    n_tiles = rows_ref.shape[0]
    # NOTE: CTAs visit tiles last-first: later tiles of a sequence see more
    # context, so the longest CTAs start first.
    self.index = n_tiles - 1 - lax.axis_index("tile")
    self.head = lax.axis_index("head")
    tokens = rows_ref[self.index]
    self.first_pos = pos_ref[self.index]
    # Q row r of the tile is row q_row + r % block_q of q_ref, the token at
    # position box_pos + r % block_q; rows before `shift` belong to the tile
    # before (recomputed, never kept).
    # NOTE: in units of ALIGN (8) rows, so Mosaic can prove the box starts on
    # a swizzled tile's row boundary.
    self.q_row = qrow_ref[self.index] * ALIGN
    self.box_pos = self.first_pos - shift_ref[self.index]
    kv_len = kvlen_ref[self.index]
    live = tokens > 0
    # Cache positions [0, end) are visible to some row of this tile.
    self.end = jnp.where(
        live, jnp.minimum(kv_len, self.first_pos + tokens), 0)
    self.num_steps = _cdiv(self.end, cfg.block_kv)
    # Steps wholly at or below the first token's position need no mask.
    self.num_full = jnp.where(live, lax.div(self.first_pos + 1, cfg.block_kv),
                              0)
    self.last_page = jnp.maximum(_cdiv(self.end, block_size) - 1, 0)
    # The tile reads blocks 0..last_page only, so it can meet unwritten slots
    # only if that block is the sequence's last and is partial.
    self.dirty_tail = (self.last_page + 1) * block_size > kv_len
    self.seq = seq_ref[self.index]
    self.table_base = self.seq * cfg.max_blocks
    self.first_kv = 0  # the tile's cache walk starts at position 0


def register_pool(warpgroups: int) -> int:
  """Registers a thread summed over a CTA's warpgroups: the SM's 64K over its
  threads, rounded down to 8 a thread as at launch (3 x 168 = 504 for three)."""
  return 65536 // (128 * warpgroups) // 8 * 8 * warpgroups


def compute_registers(compute_wgs: int, memory: int = MEMORY_REGISTERS) -> int:
  """Registers per compute thread: the CTA's pool minus the memory
  warpgroup's share (`memory` a thread), split over the compute warpgroups
  (<= 256, a multiple of 8).

  NOTE: setmaxnreg.inc waits until the registers it asks for are free, so
  asking for more than the pool hangs the kernel: 2 x 208 + 96 over 504 did
  (the 8-bit prefill, H100, 2026-12-08, docs/benchmarks.md).
  """
  pool = register_pool(compute_wgs + 1)
  return min(256, (pool - memory) // compute_wgs) // 8 * 8


def consumer(tile: Tile, q_ref, o_ref, bufs, bars, cfg: Static):
  """Compute warpgroup `wg`: attention of its 64 rows over the tile's steps."""
  plgpu.set_max_registers(
      compute_registers(cfg.compute_wgs, cfg.memory_registers), action="increase")
  qo_smem, p_all, k_smem, v_smem = bufs
  # qo_smem [wgs, 64, d]; p_all [wgs, 64, block_kv] or None; k/v_smem
  # [stages, block_kv, d] (all SMEM, swizzled)
  wg = lax.axis_index("wg")
  qo = qo_smem.at[wg]  # [64, d]: this warpgroup's Q, later its output
  boxes = _boxes(tile, wg, cfg)
  for rows, q_rows, _, head in boxes:  # q_ref [q rows, hkv, gp, d] (GMEM)
    plgpu.copy_gmem_to_smem(q_ref.at[q_rows, tile.head, head], qo.at[rows],
                            bars["q"].at[wg])
  plgpu.barrier_wait(bars["q"].at[wg])
  sched = bars["sched"] if cfg.pingpong else None
  if sched is not None:
    pl.when(wg == 1)(lambda: _sync(sched))
  step = functools.partial(
      attention_step, qo=qo,
      p_smem=None if p_all is None else p_all.at[wg],  # [64, block_kv]
      k_smem=k_smem, v_smem=v_smem, bars=bars, cfg=cfg, sched=sched)
  carry = lax.fori_loop(0, tile.num_full,
                        functools.partial(step, mask=None), initial_carry(qo))
  mask = functools.partial(_causal_mask, tile=tile, wg=wg, cfg=cfg)
  acc, _, l = lax.fori_loop(tile.num_full, tile.num_steps,
                            functools.partial(step, mask=mask), carry)
  if sched is not None:
    pl.when(wg == 0)(lambda: _sync(sched))
  inv = jnp.where(l > 0, 1.0 / jnp.where(l > 0, l, 1.0), 0.0)  # empty: zeros
  qo[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(qo.dtype)
  plgpu.commit_smem()
  for rows, _, slots, head in boxes:  # o_ref [slots, hkv, gp, d] (GMEM)
    plgpu.copy_smem_to_gmem(qo.at[rows], o_ref.at[slots, tile.head, head])
  plgpu.wait_smem_to_gmem(0)


def initial_carry(qo):
  """(acc [64, d], running max [64] (log2 domain), running sum [64]), f32."""
  row_layout = plgpu.Layout.WGMMA.reduce(1)
  return (plgpu.layout_cast(jnp.zeros(qo.shape, jnp.float32),
                            plgpu.Layout.WGMMA),
          plgpu.layout_cast(jnp.full((ROWS_PER_WG,), NEG_BIG, jnp.float32),
                            row_layout),
          plgpu.layout_cast(jnp.zeros((ROWS_PER_WG,), jnp.float32),
                            row_layout))


def _boxes(tile: Tile, wg, cfg: Static):
  """(SMEM rows, Q rows, output slots, group head) of each box of warpgroup
  wg. Tile row R = wg * 64 + r is head R // block_q, token R % block_q.
  """
  box = cfg.box_rows
  out = []
  for i in range(ROWS_PER_WG // box):
    row = wg * ROWS_PER_WG + i * box
    token = lax.rem(row, cfg.block_q)
    out.append((pl.ds(i * box, box), pl.ds(tile.q_row + token, box),
                pl.ds(tile.index * cfg.block_q + token, box),
                lax.div(row, cfg.block_q)))
  return out


def _sync(barrier):
  """Arrive and wait: the ping-pong of two compute warpgroups (as in
  attention_mgpu): while one runs its softmax the other issues its wgmma."""
  plgpu.barrier_arrive(barrier)
  plgpu.barrier_wait(barrier)


def _causal_mask(s, step, *, tile: Tile, wg, cfg: Static):
  """s [64, block_kv] with keys past each row's position set to NEG_BIG.

  Row r is at position box_pos + (wg * 64 + r) % block_q; padded rows are
  clamped to the last visible position, never seeing slots past the sequence.
  """
  row = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
  key = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
  limit = jnp.minimum(
      tile.box_pos + lax.rem(row + wg * ROWS_PER_WG, cfg.block_q),
      tile.end - 1)
  return jnp.where(key + step * cfg.block_kv <= limit, s, NEG_BIG)


def attention_step(step, carry, *, qo, p_smem, k_smem, v_smem, bars, cfg,
                   sched, mask):
  """One pipeline step of a compute warpgroup: S = Q Kᵀ of stage
  `step % cfg.stages`, `mask(s, step)` unless None, online softmax, O += P V.
  The decode kernel (decode_mosaic_kernel.py) runs it too."""
  acc, m_prev, l_prev = carry  # [64, d] f32, [64] f32, [64] f32
  slot = lax.rem(step, cfg.stages)
  plgpu.barrier_wait(bars["k_ready"].at[slot])

  def qk(acc_ref):  # acc_ref [64, block_kv] f32
    plgpu.wgmma(acc_ref, qo, k_smem.at[slot].transpose((1, 0)))
    if sched is not None:
      _sync(sched)
    return acc_ref[...]

  s = pl.run_scoped(qk, plgpu.ACC((ROWS_PER_WG, cfg.block_kv), jnp.float32))
  plgpu.barrier_arrive(bars["k_free"].at[slot])
  s = s * (cfg.scale * LOG2E)  # log2 domain
  if mask is not None:
    s = mask(s, step)
  m_new = jnp.maximum(m_prev, s.max(axis=1))
  alpha = jnp.exp2(m_prev - m_new)
  p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
  l_new = l_prev * alpha + p.sum(axis=1)
  acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
  p16 = p.astype(v_smem.dtype)  # [64, block_kv]
  if p_smem is not None:  # P through shared memory (see Static.p_in_regs)
    p_smem[...] = p16
    plgpu.commit_smem()
  if sched is not None:
    plgpu.barrier_arrive(sched)  # softmax done
  plgpu.barrier_wait(bars["v_ready"].at[slot])
  if sched is not None:
    plgpu.barrier_wait(sched)  # the tensor cores are ours
  acc = _pv(acc, p16, p_smem, v_smem.at[slot])
  plgpu.barrier_arrive(bars["v_free"].at[slot])
  return acc, m_new, l_new


def _pv(acc, p16, p_smem, v):
  """acc [64, d] f32 + P [64, block_kv] @ v [block_kv, d] (SMEM) on wgmma.

  With p_smem None, P comes from registers and wgmma accumulates onto acc;
  else P was stored in p_smem and a zeroed accumulator is added to acc.
  """
  if p_smem is None:
    def pv_in_place(acc_ref):  # acc_ref [64, d] f32, starts at acc
      plgpu.wgmma(acc_ref, p16, v)
    return pl.run_state(pv_in_place)(plgpu.ACC.init(acc))

  def pv_fresh(acc_ref):  # acc_ref [64, d] f32, starts at zero
    plgpu.wgmma(acc_ref, p_smem, v)
    return acc_ref[...]
  return acc + pl.run_scoped(pv_fresh, plgpu.ACC(acc.shape, jnp.float32))
