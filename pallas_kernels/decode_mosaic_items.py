"""Which CTA of the 8-bit Mosaic decode takes which work item.

An item is a (row, KV-head group, split) of the decode (row-major by its
ticket, 0 .. count - 1). With DecodeMosaicConfig.ctas = 0 each CTA takes one;
with ctas = n the grid is at most n CTAs that take items in turn, one after
another on the same pipeline (Items):

  static   CTA c takes tickets c, c + ctas, c + 2 ctas, ...;
  dynamic  CTA c takes ticket c, then each next ticket from a global counter
           (an atomic add) as its memory warpgroup starts an item, so CTAs
           that stream faster take more items (DecodeMosaicConfig.dynamic).

NOTE (docs/benchmarks.md, 2026-12-07): with static tickets the CTAs' end
times spread by 10-15 % over CTAs of equal work under the profiler (H100; the
slow ones in groups of neighbouring SMs), and the kernel takes as long as the
slowest. Dynamic tickets took int8 with qk_8bit over 16-token blocks 5-6 %
faster on the H200 and left the other tilings within 1.5 % (the tuning table
picks them per shape).

Every warpgroup of a CTA walks the same tickets. Dynamic tickets go through a
ring of slots in shared memory (Ring): the memory warpgroup claims ticket
k + 1 as it starts item k and publishes it; each warpgroup reads it at its
own start of item k and frees the slot. The ticket at or past `count` ends
every warpgroup's loop.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax
from jax._src.lib.mlir import ir
from jax._src.lib.mlir.dialects import arith
from jax._src.lib.mlir.dialects import memref
from jax.experimental import pallas as pl
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax.experimental.pallas import mosaic_gpu as plgpu


class Items:
  """The work items of a grid of at most `cfg.ctas` CTAs (kernel.Static;
  one CTA an item when cfg.ctas is 0).

  NOTE: with static tickets the grid is the fewest CTAs that take as many
  rounds of items as cfg.ctas would (1,024 items on a cap of 132: 128 CTAs
  of 8, not 100 of 8 and 32 of 7), so that no CTA's last round runs beside
  idle ones; dynamic tickets take every CTA of the cap.
  """

  def __init__(self, batch: int, groups: int, cfg):
    self.groups, self.splits = groups, cfg.num_splits
    self.count = batch * groups * cfg.num_splits
    self.dynamic = bool(cfg.dynamic) and cfg.ctas > 0
    if self.dynamic:
      self.ctas = min(cfg.ctas, self.count)
    else:
      rounds = -(-self.count // cfg.ctas) if cfg.ctas else 1
      self.ctas = -(-self.count // rounds)

  def decode(self, t):
    """Ticket t's item: (row, group, split) int32 scalars (row-major)."""
    per_row = self.groups * self.splits
    return (lax.div(t, per_row), lax.div(lax.rem(t, per_row), self.splits),
            lax.rem(t, self.splits))

  def fold(self, body, carry, tickets=None, writer: bool = False):
    """carry = body(k, t, t_next, carry) over this CTA's items: k counts
    them, t is the k-th one's ticket, t_next the next one's (>= count: none).

    tickets: the CTA's Ring of dynamic tickets (else None); writer: this
    warpgroup claims and publishes them (the memory warpgroup).
    """
    def step(c):
      k, t, carry = c
      if tickets is None:
        t_next = t + self.ctas
      else:
        if writer:
          tickets.publish(k + 1)
        t_next = tickets.read(k + 1)
      return k + 1, t_next, body(k, t, t_next, carry)

    first = lax.axis_index("cta")
    n, _, carry = lax.while_loop(lambda c: c[1] < self.count, step,
                                 (jnp.int32(0), first, carry))
    if tickets is not None and writer:
      tickets.drain(n)
    return carry


@dataclasses.dataclass(frozen=True)
class Ring:
  """Dynamic tickets 1, 2, ... of a CTA (ticket 0 is its CTA index) in
  `slots_ref` [slots] int32 (SMEM), ticket j in slot (j - 1) % slots.

  ctas: the grid's (Items.ctas); ready[slot]: the writer published it (1
  arrival); free[slot]: every warpgroup read it (`parties` arrivals);
  claim: [1] int32 SMEM, where the writer's atomic lands; counter: the
  global int32 (a semaphore: Mosaic GPU zeroes a kernel's global semaphores
  at launch), None in interpret mode, where ticket j is the static one
  (CTA + j ctas), through the same ring.
  """
  ctas: int
  slots_ref: object
  claim: object
  ready: object
  free: object
  counter: object

  @classmethod
  def of(cls, items: Items, refs: dict, interpret: bool) -> "Ring":
    """The Ring over scratch's refs (by name) and, on a GPU, the kernel's
    global counter."""
    counter = None if interpret else pl.get_global(plgpu.SemaphoreType.REGULAR)
    return cls(items.ctas, refs["ticket_slots"], refs["ticket_claim"],
               refs["t_ready"], refs["t_free"], counter)

  @property
  def slots(self) -> int:
    return self.slots_ref.shape[0]

  def publish(self, j):
    """Claims ticket j (>= 1) into its slot, once every warpgroup read the
    slot's last one."""
    slot = lax.rem(j - 1, self.slots)
    pl.when(j > self.slots)(lambda: plgpu.barrier_wait(self.free.at[slot]))
    if self.counter is None:
      t = lax.axis_index("cta") + j * self.ctas
    else:
      _claim(self.counter, self.claim, self.ctas)
      t = self.claim[0]
    self.slots_ref[slot] = t
    plgpu.barrier_arrive(self.ready.at[slot])

  def read(self, j):
    """Ticket j (>= 1), once published; frees its slot."""
    slot = lax.rem(j - 1, self.slots)
    plgpu.barrier_wait(self.ready.at[slot])
    t = self.slots_ref[slot]
    plgpu.barrier_arrive(self.free.at[slot])
    return t

  def drain(self, n):
    """Observes the frees of the last slots' tickets of n (the writer waits
    for every phase of `free` it did not wait for before a reuse)."""
    @pl.loop(jnp.maximum(n - self.slots, 0) + 1, n + 1)
    def _wait(j):
      plgpu.barrier_wait(self.free.at[lax.rem(j - 1, self.slots)])


def scratch(cfg) -> dict:
  """The Ring's shared memory and barriers by name (run_scoped's kwargs):
  ticket_slots, ticket_claim, t_ready, t_free."""
  slots = ring_slots(cfg)
  return dict(ticket_slots=plgpu.SMEM((slots,), jnp.int32),
              ticket_claim=plgpu.SMEM((1,), jnp.int32),
              t_ready=plgpu.Barrier(num_arrivals=1, num_barriers=slots),
              t_free=plgpu.Barrier(num_arrivals=parties(cfg), num_barriers=slots))


def ring_slots(cfg) -> int:
  """Ticket slots: the memory warpgroup runs at most `stages` steps, so as
  many items, ahead of the slowest warpgroup, and claims one item ahead."""
  return cfg.stages + 2


def parties(cfg) -> int:
  """The warpgroups reading each ticket: every stream's compute warpgroup and
  V converters, and the memory warpgroup."""
  return cfg.streams * (1 + cfg.v_converters) + 1


def _claim(counter, claim, ctas: int):
  """claim[0] = ctas + the counter's value before one thread adds 1 to it
  (atom.global.add), seen by every thread of the calling warpgroup."""
  utils = mgpu_utils

  @plgpu.inline_mgpu(arg_types=(plgpu.RefType(), plgpu.RefType()))
  def claim_next(_, counter_ref, claim_ref):
    i32 = ir.IntegerType.get_signless(32)
    utils.warpgroup_barrier()  # every thread has read the last claim
    with utils.single_thread(utils.ThreadSubset.WARPGROUP):
      old = utils.inline_ptx("atom.relaxed.gpu.global.add.u32 $0, [$1], 1;",
                             utils.memref_ptr(counter_ref), result_types=i32,
                             has_side_effects=True)
      memref.store(arith.addi(old, utils.c(ctas, i32)), claim_ref,
                   [utils.c(0, ir.IndexType.get())])
    utils.warpgroup_barrier()  # the claim is every thread's

  claim_next(counter, claim)
