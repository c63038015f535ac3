"""Continuous batching: which tokens of which requests run in the next step.

The scheduler owns the waiting and running queues. Each `schedule()` call
returns a plain `ScheduleOutput` (host data only); `update()` applies the
sampled tokens afterwards. It never touches device arrays.

One step runs every running request that is decoding (one token each) and
then fills the rest of the per-step token budget with prefill chunks: first
of requests already prefilling, then of newly admitted ones. So a long prompt
never stalls running decodes for more than one chunk.
"""
from __future__ import annotations

import collections
import dataclasses

from engine.kv_cache_manager import KVCacheManager
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

  @property
  def num_sampled(self) -> int:
    """Tokens this row samples: one per decode iteration, or one at a prompt's end."""
    return self.num_new_tokens if self.is_decode else int(self.samples)


@dataclasses.dataclass
class ScheduleOutput:
  decodes: list[ScheduledRequest] = dataclasses.field(default_factory=list)
  prefills: list[ScheduledRequest] = dataclasses.field(default_factory=list)
  preempted: list[Request] = dataclasses.field(default_factory=list)
  rejected: list[Request] = dataclasses.field(default_factory=list)   # can never fit in the cache

  @property
  def num_scheduled_tokens(self) -> int:
    return len(self.decodes) + sum(s.num_new_tokens for s in self.prefills)

  @property
  def is_empty(self) -> bool:
    return not self.decodes and not self.prefills


def _remaining(request: Request) -> int:
  """Tokens not yet in the cache, counting a token still pending on the device."""
  return request.num_tokens_with_pending - request.num_computed_tokens


class Scheduler:
  """Waiting/running queues, token budget, chunking, admission and preemption."""

  def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
    self.config = config
    self.kv = kv
    self.waiting: collections.deque[Request] = collections.deque()
    self.running: list[Request] = []          # in admission order
    self.num_preemptions = 0

  # -- queue management -----------------------------------------------------

  def add(self, request: Request) -> None:
    request.status = RequestStatus.WAITING
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
    request.status = RequestStatus.FINISHED
    request.finish_reason = reason

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
      self._schedule_waiting(out, budget)
    if self.config.num_decode_steps > 1 and not out.prefills and not out.preempted:
      self._extend_decodes(out)
    return out

  def _extend_decodes(self, out: ScheduleOutput) -> None:
    """Turns a decode-only step into a multi-step decode: up to `num_decode_steps`
    tokens per row, capped by what each request may still produce.

    NOTE: lookahead never preempts: a row whose extra slots do not fit now keeps
    its single token. Only decode-only steps are extended, so a prefill chunk
    or an admission waits at most one multi-step.
    """
    for s in out.decodes:
      k = min(self.config.num_decode_steps, self._tokens_left(s.request))
      if k > 1 and self.kv.allocate_slots(s.request, k):
        s.num_new_tokens = k
        s.block_table = self.kv.block_table(s.request.request_id)

  def _schedule_decodes(self, out: ScheduleOutput, budget: int) -> int:
    for request in list(self.running):
      # NOTE: preemption sets WAITING; a status check keeps this loop O(running).
      if request.status != RequestStatus.RUNNING or budget < 1:
        continue                       # preempted meanwhile, or budget spent
      if _remaining(request) != 1 or self._at_limit(request):
        continue                       # still prefilling, or about to finish
      if self._allocate_or_preempt(request, 1, out):
        out.decodes.append(self._scheduled(request, 1, is_decode=True))
        budget -= 1
    return budget

  def _schedule_running_prefills(self, out: ScheduleOutput, budget: int) -> int:
    for request in list(self.running):
      remaining = _remaining(request)
      if request.status != RequestStatus.RUNNING or remaining <= 1 or budget < 1:
        continue                       # preempted, decoding (handled above), or no budget
      n = min(remaining, budget)
      if self._allocate_or_preempt(request, n, out):
        out.prefills.append(self._scheduled(request, n))
        budget -= n
    return budget

  def _schedule_waiting(self, out: ScheduleOutput, budget: int) -> None:
    while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
      request = self.waiting[0]
      if request.num_pending_tokens:
        break                          # preempted with a token in flight: wait for it
      if self._never_fits(request):
        self.waiting.popleft()
        out.rejected.append(request)
        continue
      blocks, num_hit = self.kv.get_computed_blocks(request)
      remaining = _remaining(request) - num_hit
      n = min(remaining, budget) if self.config.enable_chunked_prefill else remaining
      if n > budget and (out.prefills or out.decodes):
        break                          # whole prompt does not fit this step's budget
      if not self._admissible(request, num_hit + n):
        break
      if not self.kv.allocate_slots(request, n, blocks, num_hit):
        break
      self.waiting.popleft()
      request.status = RequestStatus.RUNNING
      request.num_computed_tokens = num_hit   # before _scheduled(): the chunk starts here
      if request.num_preemptions == 0:
        request.num_cached_prompt_tokens = num_hit
      self.running.append(request)
      out.prefills.append(self._scheduled(request, n))
      budget -= n

  def _admissible(self, request: Request, num_tokens: int) -> bool:
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
    request.status = RequestStatus.WAITING
    request.num_computed_tokens = 0
    request.num_preemptions += 1
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

  def _tokens_left(self, request: Request) -> int:
    """Tokens the request may still sample beyond those it has or has pending."""
    produced = request.num_output_tokens + request.num_pending_tokens
    return min(request.sampling_params.max_tokens - produced,
               self.config.max_model_len - request.num_tokens_with_pending)

  def _at_limit(self, request: Request) -> bool:
    """Its pending tokens are its last ones: it finishes when they land."""
    return self._tokens_left(request) <= 0

  # -- after the step --------------------------------------------------------

  def update(self, out: ScheduleOutput) -> None:
    """Called once the step is dispatched: its tokens count as computed, and each
    sampling row's sampled tokens are pending until `ScheduleOutput`'s results land."""
    for s in out.decodes + out.prefills:
      s.request.num_computed_tokens += s.num_new_tokens
      s.request.num_pending_tokens += s.num_sampled
      # NOTE: blocks whose tokens are all known get hashed; the block holding a
      # pending token is hashed once that token lands (see LLMEngine).
      self.kv.cache_full_blocks(s.request)
