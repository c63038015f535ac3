"""Continuous batching: which tokens of which requests run in the next step.

The scheduler owns the waiting and running queues. Each `schedule()` call
returns a plain `ScheduleOutput` (host data only); `update()` marks a dispatched
step's tokens computed and its sampled ones pending (the engine core lands them).
It changes requests only through their methods and never touches device arrays.

One step runs every running request that is decoding (one token each) and
then fills the rest of the per-step token budget with prefill chunks: first
of requests already prefilling, then of newly admitted ones. So a long prompt
never stalls running decodes for more than one chunk.
"""
from __future__ import annotations

import collections
import dataclasses

from engine.config import EngineConfig
from engine.kv_cache_manager import BaseKVCacheManager
from engine.outputs import FinishReason
from engine.request import Request, RequestStatus


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  max_model_len: int
  max_num_seqs: int = 64            # running requests at most
  max_batch_tokens: int = 512       # tokens computed per step at most (decodes + prefill chunks)
  enable_chunked_prefill: bool = True
  watermark: float = 0.01           # fraction of blocks admission keeps free
  reserve_blocks_per_seq: int = 1   # growth reserved for each running request at admission
  num_decode_steps: int = 1         # decode tokens per request per step when no prefill runs

  def __post_init__(self):
    if self.num_decode_steps < 1:
      raise ValueError(f"num_decode_steps must be >= 1, got {self.num_decode_steps}")
    if self.max_batch_tokens < 1 or self.max_num_seqs < 1:
      raise ValueError("max_batch_tokens and max_num_seqs must be positive")
    if not self.enable_chunked_prefill and self.max_batch_tokens < self.max_model_len:
      raise ValueError(
          f"without chunked prefill max_batch_tokens ({self.max_batch_tokens}) must be "
          f">= max_model_len ({self.max_model_len}) so that any prompt fits one step")


def step_tokens(config: EngineConfig, max_model_len: int) -> int:
  """Tokens one step may schedule: the budget, or a whole prompt without chunked prefill."""
  if config.enable_chunked_prefill:
    return config.max_batch_tokens
  return max(config.max_batch_tokens, max_model_len)


def scheduler_config(config: EngineConfig, max_model_len: int) -> SchedulerConfig:
  """The scheduler's config of an engine (the real one and the simulator's: one rule)."""
  return SchedulerConfig(max_model_len=max_model_len, max_num_seqs=config.max_num_seqs,
                         max_batch_tokens=step_tokens(config, max_model_len),
                         enable_chunked_prefill=config.enable_chunked_prefill,
                         watermark=config.watermark, num_decode_steps=config.num_decode_steps)


@dataclasses.dataclass
class ScheduledRequest:
  """`num_new_tokens` tokens of `request`, from `request.num_computed_tokens` on.

  NOTE: a decode row of a multi-step decode has num_new_tokens = k > 1: the
  step runs k decode iterations on the device, each feeding its sampled token
  to the next, so it computes k tokens' K/V and samples k tokens.
  """
  request: Request
  start: int                 # request.num_computed_tokens when scheduled
  num_new_tokens: int
  block_table: list[int]

  @property
  def token_ids(self) -> list[int]:
    """The chunk's token ids (a decode whose token is pending has none on the host)."""
    return self.request.all_token_ids[self.start:self.start + self.num_new_tokens]

  samples: bool = False      # the chunk reaches the request's last token: sample the next
  is_decode: bool = False
  # NOTE: speculative decoding: a decode row's proposed next tokens, verified in
  # this step after its last token (num_new_tokens = 1 + len(draft_token_ids)).
  draft_token_ids: tuple[int, ...] = ()

  @property
  def num_sampled(self) -> int:
    """Tokens this row samples: one per decode iteration, or one at a prompt's end."""
    return self.num_new_tokens if self.is_decode else int(self.samples)


@dataclasses.dataclass
class ScheduleOutput:
  decodes: list[ScheduledRequest] = dataclasses.field(default_factory=list)
  prefills: list[ScheduledRequest] = dataclasses.field(default_factory=list)
  preempted: list[Request] = dataclasses.field(default_factory=list)
  admitted: list[Request] = dataclasses.field(default_factory=list)    # left the waiting queue
  rejected: list[Request] = dataclasses.field(default_factory=list)   # can never fit in the cache

  @property
  def num_scheduled_tokens(self) -> int:
    return len(self.decodes) + sum(s.num_new_tokens for s in self.prefills)

  @property
  def is_empty(self) -> bool:
    return not self.decodes and not self.prefills


class Scheduler:
  """Waiting/running queues, token budget, chunking, admission and preemption."""

  def __init__(self, config: SchedulerConfig, kv: BaseKVCacheManager, proposer=None):
    self.config = config
    self.kv = kv
    # Speculative decoding: `proposer.propose(request, max_drafts)` gives draft
    # tokens (engine/spec/ngram.py); None: off.
    self.proposer = proposer
    self.waiting: collections.deque[Request] = collections.deque()
    self.running: list[Request] = []          # in admission order
    self.num_preemptions = 0

  # -- queue management -----------------------------------------------------

  def add(self, request: Request) -> None:
    self.waiting.append(request)

  def finish(self, request: Request, reason: FinishReason) -> None:
    """Finishes a waiting or running request and frees its blocks."""
    if request.is_finished:
      return
    if request in self.running:
      self.running.remove(request)
    elif request in self.waiting:
      self.waiting.remove(request)
    self.kv.free(request)
    if self.proposer is not None:
      self.proposer.forget(request.request_id)
    request.finish(reason)

  def has_unfinished(self) -> bool:
    return bool(self.waiting or self.running)

  # -- scheduling -----------------------------------------------------------

  def schedule(self) -> ScheduleOutput:
    out = ScheduleOutput()
    budget = self.config.max_batch_tokens
    budget = self._schedule_decodes(out, budget)
    budget = self._schedule_running_prefills(out, budget)
    if not out.preempted:
      # NOTE: no admission in a step that had to preempt: memory is short.
      budget = self._schedule_waiting(out, budget)
    if self.config.num_decode_steps > 1 and not out.prefills and not out.preempted:
      self._extend_decodes(out)
    if self.proposer is not None and not out.preempted:
      self._add_drafts(out, budget)
    return out

  def _add_drafts(self, out: ScheduleOutput, budget: int) -> None:
    """Speculative decoding: each decode row verifies the proposer's drafts in this
    step, as many as the leftover token budget, the row's `max_tokens` and context,
    and the free blocks allow.

    NOTE: drafts come last and never preempt: they take only what the real work of
    the step left. A row's drafts need its tokens on the host (none pending).
    """
    for s in out.decodes:
      request = s.request
      limit = min(budget, request.tokens_left(self.config.max_model_len) - 1)
      if limit < 1 or request.num_pending_tokens:
        continue
      drafts = self.proposer.propose(request, limit)
      if drafts and not self.kv.allocate_slots(request, 1 + len(drafts)):
        held = len(s.block_table) * self.kv.block_size     # no block free: those held
        drafts = drafts[:max(0, held - request.num_computed_tokens - 1)]
      if drafts:
        s.draft_token_ids = tuple(drafts)
        s.num_new_tokens = 1 + len(drafts)
        s.block_table = self.kv.block_table(request.request_id)
        budget -= len(drafts)

  def _extend_decodes(self, out: ScheduleOutput) -> None:
    """Turns a decode-only step into a multi-step decode: up to `num_decode_steps`
    tokens per row, capped by what each request may still produce.

    NOTE: lookahead never preempts: a row whose extra slots do not fit now keeps
    its single token. Only decode-only steps are extended, so a prefill chunk
    or an admission waits at most one multi-step.
    """
    for s in out.decodes:
      k = min(self.config.num_decode_steps, s.request.tokens_left(self.config.max_model_len))
      if k > 1 and self.kv.allocate_slots(s.request, k):
        s.num_new_tokens = k
        s.block_table = self.kv.block_table(s.request.request_id)

  def _schedule_decodes(self, out: ScheduleOutput, budget: int) -> int:
    for request in list(self.running):
      # NOTE: preemption sets WAITING; a status check keeps this loop O(running).
      if request.status != RequestStatus.RUNNING or budget < 1:
        continue                       # preempted meanwhile, or budget spent
      if request.num_uncomputed_tokens != 1 or self._at_limit(request):
        continue                       # still prefilling, or about to finish
      if self._allocate_or_preempt(request, 1, out):
        out.decodes.append(self._scheduled(request, 1, is_decode=True))
        budget -= 1
    return budget

  def _schedule_running_prefills(self, out: ScheduleOutput, budget: int) -> int:
    for request in list(self.running):
      remaining = request.num_uncomputed_tokens
      if request.status != RequestStatus.RUNNING or remaining <= 1 or budget < 1:
        continue                       # preempted, decoding (handled above), or no budget
      n = min(remaining, budget)
      if self._allocate_or_preempt(request, n, out):
        out.prefills.append(self._scheduled(request, n))
        budget -= n
    return budget

  def _schedule_waiting(self, out: ScheduleOutput, budget: int) -> int:
    """Admits waiting requests into what is left of `budget`; returns the rest."""
    while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
      request = self.waiting[0]
      if request.num_pending_tokens:
        break                          # preempted with a token in flight: wait for it
      if self._never_fits(request):
        self.waiting.popleft()
        out.rejected.append(request)
        continue
      blocks, num_hit = self.kv.get_computed_blocks(request)
      remaining = request.num_uncomputed_tokens - num_hit
      n = min(remaining, budget) if self.config.enable_chunked_prefill else remaining
      if n > budget and (out.prefills or out.decodes):
        break                          # whole prompt does not fit this step's budget
      if not self.admissible(request, num_hit + n):
        break
      if not self.kv.allocate_slots(request, n, blocks, num_hit):
        break
      self.waiting.popleft()
      request.admit(num_hit)            # before _scheduled(): the chunk starts here
      self.running.append(request)
      out.admitted.append(request)
      out.prefills.append(self._scheduled(request, n))
      budget -= n
    return budget

  def admissible(self, request: Request, num_tokens: int) -> bool:
    """Watermark check: blocks in use + this request's + reserved growth stay under the limit."""
    total = self.kv.num_total_blocks
    needed = self.kv.num_blocks_needed(request, num_tokens)
    reserved = self.config.reserve_blocks_per_seq * len(self.running)
    limit = total * (1.0 - self.config.watermark)
    return self.kv.num_used_blocks + needed + reserved <= max(limit, needed)

  def _never_fits(self, request: Request) -> bool:
    # A waiting request holds no blocks, so this is its whole need.
    return self.kv.num_blocks_needed(request, request.num_tokens + 1) > self.kv.num_total_blocks

  def _allocate_or_preempt(self, request: Request, n: int, out: ScheduleOutput) -> bool:
    """Allocates slots for `n` more tokens, preempting others until it fits.

    Returns False when `request` itself had to be preempted.
    """
    while not self.kv.allocate_slots(request, n):
      victim = self._pick_victim()
      self._preempt(victim, out)
      if victim is request:
        return False
    return True

  def _pick_victim(self) -> Request:
    # Lowest priority (largest value) first, then the latest admitted.
    order = {id(r): i for i, r in enumerate(self.running)}
    return max(self.running, key=lambda r: (r.priority, order[id(r)]))

  def _preempt(self, request: Request, out: ScheduleOutput) -> None:
    # NOTE: outputs are kept; the request recomputes prompt + outputs later.
    self.running.remove(request)
    self.kv.free(request)
    request.preempt()
    self.num_preemptions += 1
    out.decodes = [s for s in out.decodes if s.request is not request]
    out.prefills = [s for s in out.prefills if s.request is not request]
    out.preempted.append(request)
    self.waiting.appendleft(request)

  def _scheduled(self, request: Request, n: int, is_decode: bool = False) -> ScheduledRequest:
    start = request.num_computed_tokens
    return ScheduledRequest(request, start, n, self.kv.block_table(request.request_id),
                            samples=start + n == request.num_tokens_with_pending,
                            is_decode=is_decode)

  def _at_limit(self, request: Request) -> bool:
    """Its pending tokens are its last ones: it finishes when they land."""
    return request.tokens_left(self.config.max_model_len) <= 0

  # -- after the step --------------------------------------------------------

  def reject_drafts(self, request: Request, num_rejected: int) -> None:
    """A verify step's result arrived (before its tokens land): its `num_rejected` last
    tokens (drafts `update` counted as computed and pending) were not accepted.

    NOTE: their K/V stay in the cache past num_computed_tokens and are
    overwritten later; blocks holding only such slots go back to the pool
    (never hashed: only computed blocks of known tokens are).
    """
    request.reject_drafts(num_rejected)
    self.kv.free_surplus(request, request.num_computed_tokens + 1)

  def update(self, out: ScheduleOutput) -> None:
    """Called once the step is dispatched: its tokens count as computed, and each
    sampling row's sampled tokens are pending until `ScheduleOutput`'s results land."""
    for s in out.decodes + out.prefills:
      s.request.schedule(s.num_new_tokens, s.num_sampled)
      # NOTE: blocks whose tokens are all known get hashed; the block holding a
      # pending token is hashed once that token lands (see EngineCore).
      self.kv.cache_full_blocks(s.request)
