"""A `Scheduler` that snapshots KV memory after every `schedule()` call.

Both the real engine and the simulator are built with this class (their
`scheduler_factory`), so every figure of a run comes from the same code path.
It adds no scheduling decision of its own.
"""
from __future__ import annotations

import dataclasses

from engine.prefix_cache import hash_block
from engine.request import Request
from engine.scheduler import ScheduleOutput, Scheduler


@dataclasses.dataclass(frozen=True)
class StepSnapshot:
  """Memory and batch state right after one schedule() (before the step runs)."""
  num_running: int
  num_waiting: int
  num_decodes: int
  num_prefill_tokens: int
  used_blocks: int
  free_blocks: int
  allocated_slots: int           # slots of blocks held by running requests
  used_slots: int                # of those, reserved for a real token
  memory_blocked: bool           # the head of the queue waits for KV memory
  fragmentation_blocked: bool    # ... although enough blocks are free in total
  unusable_free_blocks: int      # free blocks no waiting request can use (contiguous holes)
  admitted: tuple[str, ...]      # request ids admitted this step
  preempted: tuple[str, ...]


class RecordingScheduler(Scheduler):
  """The engine's scheduler plus per-step snapshots and prefix-cache provenance.

  NOTE: `cross_salt_hits` counts prefix-cache blocks handed to a request that
  were not filled under its cache_salt (must stay 0).
  """

  def __init__(self, config, kv, proposer=None):
    super().__init__(config, kv, proposer)
    self.snapshots: list[StepSnapshot] = []
    self.cross_salt_hits = 0
    self.num_reused_blocks = 0
    self.all_requests: dict[str, Request] = {}
    self.last_output: ScheduleOutput | None = None

  def add(self, request: Request) -> None:
    self.all_requests.setdefault(request.request_id, request)
    super().add(request)

  def schedule(self) -> ScheduleOutput:
    out = super().schedule()
    for request in out.admitted:
      self._check_hit_provenance(request)
    self.snapshots.append(self._snapshot(out))
    self.last_output = out
    return out

  def scheduled_since(self, num_snapshots: int) -> ScheduleOutput | None:
    """The work scheduled since there were `num_snapshots` snapshots; None if nothing ran."""
    if len(self.snapshots) == num_snapshots or self.last_output.is_empty:
      return None
    return self.last_output

  def _check_hit_provenance(self, request: Request) -> None:
    """Recomputes the hash chain of the request's hit blocks under its own salt.

    NOTE: a block's hash covers its tokens, its whole prefix and the cache_salt
    of the request that filled it, so equal hashes mean the block was filled
    under this request's salt; any mismatch is a cross-tenant hit.
    """
    cache = self.kv.prefix_cache
    bs = self.kv.block_size
    num_hit_blocks = request.num_computed_tokens // bs
    if cache is None or num_hit_blocks == 0:
      return
    tokens, parent = request.all_token_ids, None
    for i, block_id in enumerate(self.kv.block_table(request.request_id)[:num_hit_blocks]):
      parent = hash_block(parent, tokens[i * bs:(i + 1) * bs], request.cache_salt)
      entry = cache.entry(block_id)
      self.num_reused_blocks += 1
      if entry is None or entry.block_hash != parent:
        self.cross_salt_hits += 1

  def _snapshot(self, out: ScheduleOutput) -> StepSnapshot:
    kv = self.kv
    blocked, frag, unusable = self._memory_state()
    return StepSnapshot(
        num_running=len(self.running), num_waiting=len(self.waiting),
        num_decodes=len(out.decodes),
        num_prefill_tokens=sum(s.num_new_tokens for s in out.prefills),
        used_blocks=kv.num_used_blocks, free_blocks=kv.num_free_blocks,
        allocated_slots=kv.num_allocated_slots(), used_slots=kv.num_used_slots(),
        memory_blocked=blocked, fragmentation_blocked=frag, unusable_free_blocks=unusable,
        admitted=tuple(r.request_id for r in out.admitted),
        preempted=tuple(r.request_id for r in out.preempted))

  def _memory_state(self) -> tuple[bool, bool, int]:
    """(head blocked on memory, blocked although enough blocks are free, unusable free blocks)."""
    if not self.waiting or len(self.running) >= self.config.max_num_seqs:
      return False, False, 0
    kv, head = self.kv, self.waiting[0]
    needs = [kv.num_blocks_needed(r, r.num_tokens) for r in self.waiting]
    blocked = not kv.can_allocate(needs[0]) or not self.admissible(head, head.num_tokens)
    # NOTE: only a manager that needs consecutive blocks (contiguous) can refuse a need
    # that the free blocks cover in number.
    frag = blocked and not kv.can_allocate(needs[0]) and kv.num_free_blocks >= needs[0]
    return blocked, frag, kv.unusable_free_blocks(min(needs))
