"""The 8-bit Mosaic decode's stages (decode_mosaic_q8.py): their buffers and
barriers, the memory warpgroup that fills them and the V converters.

Barriers per stage s of the 8-bit ring: k8_ready/v8_ready (TMA landed: a
values copy per block and the scales copy), k8_free (the compute warpgroup
has read K), v8_free (every V converter is done), s_free (the compute
warpgroup has read the step's scales); per 16-bit stage: v_ready (every V
converter's chunks written and fenced), v_free (the compute warpgroup is
done).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels import decode_mosaic_q8_compute as compute
from pallas_kernels.prefill_mosaic_memory import MEMORY_REGISTERS
from pallas_kernels.prefill_mosaic_memory import block_ids
from pallas_kernels.prefill_mosaic_memory import copies_per_stage
from pallas_kernels.prefill_mosaic_memory import issue_copies

# NOTE: bf16 is stored in the WGMMA layout (2 elements a thread-vector):
# storing WGMMA_8BIT-laid bf16 into the swizzled 16-bit stage faulted with a
# misaligned address on the H200 (jax 0.11.2).
LAYOUT = compute.LAYOUT
# NOTE: per thread, beside the compute warpgroup's and the memory
# warpgroup's 40 (compute.COMPUTE_REGISTERS): 256 + 40 + 104 <= 3 * 168 (64K
# over 384 threads), with two V converters 256 + 40 + 2 * 104 <= 4 * 128, and
# with two streams 2 * 144 + 40 + 2 * 72 <= 5 * 96.
CONVERT_REGISTERS = {1: 104, 2: 72}  # by streams
# NOTE: the 16-bit V stages the compute warpgroup reads are two whatever the
# config's `stages` (the 8-bit ring's depth), so shared memory holds a
# deeper 8-bit ring (one was 2-3 % slower on the H100, 2026-12-07).
STAGES16 = 2
# The dtype of the scales the kernel reads (decode_mosaic_q8.gather_scales).
SCALES = jnp.float16


def buffers(cfg, head_dim: int, storage, smem) -> list:
  """8-bit K and V stages [stages, block_kv, d], then their scales
  [stages, block_kv] SCALES (f16, as gather_scales gives them)."""
  return [smem((cfg.stages, cfg.block_kv, head_dim), storage),
          smem((cfg.stages, cfg.block_kv, head_dim), storage),
          plgpu.SMEM((cfg.stages, cfg.block_kv), SCALES),
          plgpu.SMEM((cfg.stages, cfg.block_kv), SCALES)]


def barriers(cfg, block_size: int, q_copies: int) -> dict:
  """The barriers of the module docstring, by name; q's lands with q_copies
  copies (decode_mosaic_q8.q_inputs)."""
  copies = copies_per_stage(block_size, cfg) + 1  # the values, the scales
  n_conv = cfg.v_converters  # each arrives on v8_free and v_ready
  stage = lambda n: plgpu.Barrier(num_arrivals=n, num_barriers=cfg.stages)
  stage16 = lambda n: plgpu.Barrier(num_arrivals=n, num_barriers=STAGES16)
  return dict(q=plgpu.Barrier(num_arrivals=q_copies),
              k8_ready=stage(copies), v8_ready=stage(copies),
              k8_free=stage(1), v8_free=stage(n_conv), s_free=stage(1),
              v_ready=stage16(n_conv), v_free=stage16(1))


def producer(items, spans, bt_ref, values_ref, scales_ref, rings, bars, cfg,
             tickets=None):
  """Memory warpgroup: TMA of each stream's 8-bit K/V and scales, `stages`
  ahead, over the CTA's items (decode_mosaic_items.Items; spans[i](item):
  stream i's Span; the streams' spans differ in their KV head only: one row,
  the same blocks). values_ref [blocks, hkv, 2, bs, d], scales_ref [batch,
  hkv, 2, tokens] f16 (gather_scales; GMEM); rings, bars: per stream;
  tickets: the CTA's decode_mosaic_items.Ring of dynamic tickets (this
  warpgroup claims them), else None. With cfg.issuers > 1, warp w of the
  warpgroup issues the w-th share of the (stream, K or V) copies, in stream
  order.
  """
  plgpu.set_max_registers(MEMORY_REGISTERS, action="decrease")
  tasks = [(i, which) for i in range(cfg.streams) for which in (0, 1)]
  per = len(tasks) // cfg.issuers
  shares = [tasks[w * per:(w + 1) * per] for w in range(cfg.issuers)]

  def by_warp(f):  # f(share) on each issuing warp (one share: the warpgroup)
    if cfg.issuers == 1:
      f(tasks)
      return

    def warps():
      warp = lax.axis_index("warp")
      for w, share in enumerate(shares):
        pl.when(warp == w)(lambda share=share: f(share))

    pl.kernel(warps, mesh=plgpu.WarpMesh(axis_name="warp"))()

  def item(k, t, t_next, base):  # base: the steps of the CTA's earlier items
    del k, t_next
    its = [span_of(items.decode(t)) for span_of in spans]
    by_warp(lambda share: _issue(share, its, bt_ref, values_ref, scales_ref,
                                 rings, bars, cfg, base))
    return base + its[0].num_steps

  # NOTE: the item loop runs on the whole warpgroup (Mosaic GPU lowers no
  # while loop in a warp's code), each item's copies on the warps.
  total = items.fold(item, jnp.int32(0), tickets, writer=True)
  by_warp(lambda share: _drain_share(share, bars, total, cfg))


def _issue(share, its, bt_ref, values_ref, scales_ref, rings, bars, cfg, base):
  """The copies of `share` ((stream, 0: K or 1: V) pairs) of every step of
  an item (its: each stream's Span) whose first step is the CTA's `base`-th."""
  streams = sorted({i for i, _ in share})
  kinds = {i: [which for s, which in share if s == i] for i in streams}

  @pl.loop(0, its[0].num_steps)
  def _produce(step):
    at = base + step
    slot = lax.rem(at, cfg.stages)
    ids = block_ids(its[0], bt_ref, values_ref.shape[3], cfg, step)
    for i in streams:
      _stage_copies(its[i], values_ref, scales_ref, ids, rings[i], bars[i],
                    kinds[i], cfg, step, at, slot)


def _drain_share(share, bars, total, cfg):
  """The drain of the barriers `share`'s copies waited on (_stage_copies)."""
  for i in sorted({i for i, _ in share}):
    names = ["s_free"] + [("k8_free", "v8_free")[w] for s, w in share if s == i]
    _drain(total, [bars[i][n] for n in names], cfg.stages)


def _stage_copies(span, values_ref, scales_ref, ids, bufs, bars, kinds, cfg, step,
                  at, slot):
  """One stream's copies of the span's `step` (the CTA's `at`-th) into ring
  slot `slot`: of K (kinds 0) and V (1) and their scales, each once the
  compute warpgroup or the converters freed it."""
  # NOTE: a slot's scales are the compute warpgroup's until s_free.
  with jax.named_scope("wait_s"):
    pl.when(at >= cfg.stages)(
        lambda: plgpu.barrier_wait(bars["s_free"].at[slot]))
  stages = (bufs[0], bufs[2], "k"), (bufs[1], bufs[3], "v")
  for which in kinds:
    values, scales, name = stages[which]
    ready = bars[f"{name}8_ready"].at[slot]
    with jax.named_scope(f"wait_{name}8_free"):
      pl.when(at >= cfg.stages)(
          lambda n=name: plgpu.barrier_wait(bars[f"{n}8_free"].at[slot]))
    issue_copies(span, values_ref, ids, which, values.at[slot], ready)
    first = span.first_kv + step * cfg.block_kv
    plgpu.copy_gmem_to_smem(
        scales_ref.at[span.row, span.head, which, pl.ds(first, cfg.block_kv)],
        scales.at[slot], ready)


def converter(items, span_of, src, dst, bars, cfg, index: int, tickets=None):
  """V converter `index` of cfg.v_converters: its 64-row chunks (every
  v_converters-th) of each 8-bit stage of src [stages, block_kv, d] as 16-bit
  into the 16-bit stage dst [STAGES16, block_kv, d] (both SMEM, swizzled),
  over the CTA's items (decode_mosaic_items.Items; span_of(item): its Span;
  tickets: the Ring of dynamic tickets, else None)."""
  plgpu.set_max_registers(CONVERT_REGISTERS[cfg.streams], action="decrease")
  starts = range(index * compute.CHUNK_ROWS, cfg.block_kv,
                 cfg.v_converters * compute.CHUNK_ROWS)

  def item(k, t, t_next, base):  # base: the steps of the CTA's earlier items
    del k, t_next
    span = span_of(items.decode(t))

    @pl.loop(0, span.num_steps)
    def _convert(step):
      at = base + step
      slot, slot16 = lax.rem(at, cfg.stages), lax.rem(at, STAGES16)
      with jax.named_scope("wait_v8"):
        plgpu.barrier_wait(bars["v8_ready"].at[slot])
        pl.when(at >= STAGES16)(
            lambda: plgpu.barrier_wait(bars["v_free"].at[slot16]))
      valid = span.end - span.first_kv - step * cfg.block_kv  # rows to keep
      stage = (src.at[slot], dst.at[slot16], starts)
      with jax.named_scope("convert"):
        pl.when(valid >= cfg.block_kv)(lambda: _convert_stage(*stage, None))
        pl.when(valid < cfg.block_kv)(lambda: _convert_stage(*stage, valid))
        plgpu.commit_smem()  # generic-proxy writes before wgmma reads them
      plgpu.barrier_arrive(bars["v_ready"].at[slot16])
      plgpu.barrier_arrive(bars["v8_free"].at[slot])
    return base + span.num_steps

  _drain(items.fold(item, jnp.int32(0), tickets), (bars["v_free"],), STAGES16)


def _convert_stage(src, dst, starts, valid):
  """dst = src's numbers as dst's type (exact: int8 is a bf16 subset, e4m3
  an f16 one) in the 64-row chunks at `starts`, zero from row `valid` on
  (None: all kept).

  src [block_kv, d] 8-bit, dst [block_kv, d] bf16 or f16 (both SMEM).
  """
  chunks = [pl.ds(r0, compute.CHUNK_ROWS) for r0 in starts]
  # NOTE: every chunk loaded before any is converted and stored: 1-3 % faster
  # on the H200 than chunk by chunk (docs/benchmarks.md, 2026-12-03).
  xs = [plgpu.load(src.at[rows], layout=LAYOUT) for rows in chunks]
  for rows, x in zip(chunks, xs):
    y = compute.widen(x, dst.dtype)
    if valid is not None:
      row = plgpu.broadcasted_iota(jnp.int32, x.shape, 0, layout=LAYOUT)
      y = jnp.where(row + rows.start < valid, y, jnp.zeros_like(y))
    dst.at[rows][...] = y


def _drain(total, free_bars, stages: int):
  """Observes the releases of the CTA's last `stages` of `total` steps (every
  phase of a barrier a warpgroup waits on must be observed; the interpreter
  checks it)."""
  @pl.loop(jnp.maximum(total - stages, 0), total)
  def _wait(at):
    for bar in free_bars:
      plgpu.barrier_wait(bar.at[lax.rem(at, stages)])
