"""A request's host-side state and its transitions (admit, schedule, land, preempt, finish).

The scheduler and the engine core change a request only through these
methods; the KV managers only read it. Host-only.
"""
from __future__ import annotations

import dataclasses
import enum
import time
from typing import Callable

from engine import context_limit
from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
  WAITING = "waiting"        # not yet admitted, or preempted and requeued
  RUNNING = "running"        # holds KV blocks; prefilling or decoding
  FINISHED = "finished"


@dataclasses.dataclass(eq=False)
class Request:
  """One generation request.

  NOTE: `all_token_ids` is prompt + every token generated so far. Preemption
  frees the blocks and resets `num_computed_tokens` to 0 but keeps
  `output_token_ids`, so the request recomputes prompt + outputs and goes on
  where it stopped: no token is lost or produced twice.
  """
  request_id: str
  prompt_token_ids: list[int]
  sampling_params: SamplingParams
  eos_token_ids: tuple[int, ...] = ()
  cache_salt: str | None = None
  priority: int = 0                      # lower value = more important (vLLM convention)
  seed: int = 0                          # sampling seed (the engine draws one when the caller gives none)
  arrival_time: float = dataclasses.field(default_factory=time.monotonic)
  prompt: str | None = None

  output_token_ids: list[int] = dataclasses.field(default_factory=list)
  output_logprobs: list[float] = dataclasses.field(default_factory=list)
  num_computed_tokens: int = 0           # tokens whose K/V are in the cache
  # NOTE: 1 while the token sampled by the step in flight is still on the
  # device: it counts towards the request's length but is not in
  # output_token_ids yet. Only a decode row can consume it (from the device).
  num_pending_tokens: int = 0
  num_cached_prompt_tokens: int = 0      # of those, served from the prefix cache at admission
  status: RequestStatus = RequestStatus.WAITING
  num_preemptions: int = 0
  first_token_time: float | None = None
  finish_reason: FinishReason | None = None

  @property
  def num_prompt_tokens(self) -> int:
    return len(self.prompt_token_ids)

  @property
  def num_output_tokens(self) -> int:
    return len(self.output_token_ids)

  @property
  def num_tokens(self) -> int:
    return len(self.prompt_token_ids) + len(self.output_token_ids)

  @property
  def num_tokens_with_pending(self) -> int:
    return self.num_tokens + self.num_pending_tokens

  def token_at(self, index: int) -> int:
    """Token `index` of prompt + outputs, without building the joined list."""
    n = len(self.prompt_token_ids)
    return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

  @property
  def all_token_ids(self) -> list[int]:
    return self.prompt_token_ids + self.output_token_ids

  @property
  def max_total_tokens(self) -> int:
    """Prompt plus the most tokens this request may ever generate."""
    return self.num_prompt_tokens + self.sampling_params.max_tokens

  @property
  def is_finished(self) -> bool:
    return self.status == RequestStatus.FINISHED

  @property
  def num_uncomputed_tokens(self) -> int:
    """Tokens not yet in the cache, counting those still pending on the device."""
    return self.num_tokens_with_pending - self.num_computed_tokens

  @property
  def stop_token_ids(self) -> set[int]:
    """Tokens that stop it: its stop_token_ids and, unless ignore_eos, the model's EOS."""
    params = self.sampling_params
    stops = set(params.stop_token_ids)
    if not params.ignore_eos:
      stops.update(self.eos_token_ids)
    return stops

  def tokens_left(self, max_model_len: int, count_pending: bool = True) -> int:
    """Tokens it may still produce beyond those it holds (and, with `count_pending`, those
    still on the device): `context_limit.tokens_left`, the one length rule."""
    pending = self.num_pending_tokens if count_pending else 0
    return context_limit.tokens_left(self.sampling_params.max_tokens,
                                     self.num_output_tokens + pending, self.num_tokens + pending,
                                     max_model_len)

  # -- transitions ---------------------------------------------------------------

  def admit(self, num_cached_tokens: int) -> None:
    """Leaves the waiting queue with its first `num_cached_tokens` tokens from the prefix cache."""
    self.status = RequestStatus.RUNNING
    self.num_computed_tokens = num_cached_tokens
    if self.num_preemptions == 0:
      self.num_cached_prompt_tokens = num_cached_tokens

  def schedule(self, num_new_tokens: int, num_sampled: int) -> None:
    """A dispatched step computes `num_new_tokens` of its tokens and samples `num_sampled`
    (pending until they land)."""
    self.num_computed_tokens += num_new_tokens
    self.num_pending_tokens += num_sampled

  def land(self, tokens: list[tuple[int, float]], max_model_len: int,
           text_stop: Callable[[list[int]], int | None] | None = None,
           ) -> tuple[list[tuple[int, float]], FinishReason | None]:
    """Its pending (token, logprob)s of one step arrive: keeps them up to the first stop
    and returns (the kept ones, why it stops, or None); the rest are dropped.

    It stops at a stop token (kept), at max_tokens or the context (LENGTH), or where
    `text_stop(visible token ids)` (the detokenizer: stop strings) says it keeps fewer.
    """
    self.num_pending_tokens -= len(tokens)
    # NOTE: later steps' pending tokens are not counted: these land first.
    limit = max(1, self.tokens_left(max_model_len, count_pending=False))
    n, reason = min(len(tokens), limit), (FinishReason.LENGTH if len(tokens) >= limit else None)
    stops = self.stop_token_ids
    first_stop = next((i for i, (t, _) in enumerate(tokens[:n]) if t in stops), None)
    if first_stop is not None:
      n, reason = first_stop + 1, FinishReason.STOP
    if text_stop is not None:
      # NOTE: a stop token is kept in the ids, never in the text.
      cut = text_stop([t for t, _ in tokens[:n - 1 if reason == FinishReason.STOP else n]])
      if cut is not None:   # NOTE: a token-id stop or the length limit on the same token wins
        reason = reason if cut == n and reason is not None else FinishReason.STOP
        n = cut
    kept = tokens[:n]
    self.output_token_ids.extend(t for t, _ in kept)
    if self.sampling_params.logprobs:
      self.output_logprobs.extend(lp for _, lp in kept)
    if kept and self.first_token_time is None:
      self.first_token_time = time.monotonic()
    return kept, reason

  def reject_drafts(self, num_rejected: int) -> None:
    """Speculative decoding: the last `num_rejected` tokens of a verify step (drafts that
    `schedule` counted as computed and pending) were not accepted; call before `land`.

    NOTE: their K/V stay in the cache past num_computed_tokens, overwritten later.
    """
    self.num_computed_tokens -= num_rejected
    self.num_pending_tokens -= num_rejected

  def preempt(self) -> None:
    """Back to waiting without blocks.

    NOTE: outputs are kept; it recomputes prompt + outputs when readmitted.
    """
    self.status = RequestStatus.WAITING
    self.num_computed_tokens = 0
    self.num_preemptions += 1

  def finish(self, reason: FinishReason) -> None:
    self.status = RequestStatus.FINISHED
    self.finish_reason = reason
