"""The engine's host loop, written once: schedule -> dispatch -> land.

`EngineCore` owns one engine's requests, scheduler and KV manager and drives a
`Runner`, whatever computes a step: `LLMEngine` runs it over the device
`ModelRunner` (engine/runner.py) and adds the model, the tokenizer and the
text; the simulator runs the same loop over a cost-model runner (dummy tokens,
a predicted duration). Host-only: no JAX.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Callable, Protocol

from engine import context_limit as cl
from engine.config import EngineConfig
from engine.kv_cache_manager import BaseKVCacheManager
from engine.memory import build_kv_manager
from engine.outputs import FinishReason
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduleOutput, Scheduler, SchedulerConfig, scheduler_config
from engine.spec.ngram import NgramProposer


class PendingStep(Protocol):
  def result(self) -> dict[str, list[tuple[int, float]]]:
    """Blocks until the step is done: {request_id: [(token, logprob), ...]} of its sampling
    rows, one pair per token the row sampled (k in a k-step decode; in a verify step the
    accepted drafts and the token after them)."""


class Runner(Protocol):
  """What the core needs of whatever computes a step."""

  def execute(self, out: ScheduleOutput) -> PendingStep:
    """Starts the step; must not wait for it."""

  def release(self, request_id: str) -> None:
    """Forgets a finished or preempted request (e.g. its device token slot)."""


# (config, kv manager, draft proposer or None) -> the engine's scheduler.
SchedulerFactory = Callable[[SchedulerConfig, BaseKVCacheManager, "NgramProposer | None"],
                            Scheduler]
# (request, its new visible tokens) -> how many of them it keeps up to a stop string, or None.
TextHook = Callable[[Request, list[int]], "int | None"]


@dataclasses.dataclass
class CoreOutput:
  """What one request did in one step: the tokens it kept (maybe none) and, in its last
  output, why it finished."""
  request: Request
  token_ids: list[int]
  logprobs: list[float] | None = None
  finish_reason: FinishReason | None = None
  error: str | None = None

  @property
  def finished(self) -> bool:
    return self.finish_reason is not None


class EngineCore:
  """Requests, scheduler and KV manager of one engine, stepped over a `Runner`.

  Not thread-safe: one thread owns it.
  """

  def __init__(self, config: EngineConfig, num_blocks: int, limit: cl.ContextLimit,
               runner: Runner, *, eos_token_ids: tuple[int, ...] = (),
               scheduler_factory: SchedulerFactory = Scheduler,
               text_hook: TextHook | None = None):
    self.config = config
    self.context_limit = limit
    self.max_model_len = limit.tokens
    self.runner = runner
    self.kv = build_kv_manager(config, num_blocks)
    # NOTE: one proposer per engine (its per-request indexes live as long as the requests).
    proposer = NgramProposer(config.ngram_config()) if config.speculative else None
    self.scheduler = scheduler_factory(scheduler_config(config, self.max_model_len), self.kv,
                                       proposer)
    self.speculative = proposer is not None
    self.eos_token_ids = tuple(eos_token_ids)
    self._text_hook = text_hook
    self._requests: dict[str, Request] = {}
    self._aborts: list[str] = []
    self._in_flight: tuple[ScheduleOutput, PendingStep] | None = None  # dispatched, not read
    self._rng = random.Random(config.seed)
    self.num_prompt_tokens = 0
    self.num_prefill_tokens_computed = 0    # includes recomputation after preemption
    self.num_generation_tokens = 0
    self.num_spec_proposed_tokens = 0       # draft tokens verified (speculative decoding)
    self.num_spec_accepted_tokens = 0       # of those, accepted (before stops and limits)

  # -- requests ----------------------------------------------------------------

  def check_new_id(self, request_id: str) -> None:
    if request_id in self._requests:
      raise ValueError(f"request id {request_id!r} is already in use")

  def add_request(self, request_id: str, prompt_token_ids: list[int],
                  sampling_params: SamplingParams | None = None, *,
                  cache_salt: str | None = None, priority: int = 0,
                  prompt: str | None = None) -> Request:
    """Queues a request of (already validated) token ids; raises ValueError for a duplicate
    id or a prompt that leaves no room in the context."""
    self.check_new_id(request_id)
    ids = list(prompt_token_ids)
    cl.check_prompt(len(ids), self.context_limit)
    params = sampling_params or SamplingParams()
    # NOTE: max_tokens is capped at what the context leaves (finish reason
    # LENGTH there), so a reservation (contiguous allocator) never exceeds it.
    new_tokens = cl.max_new_tokens(params.max_tokens, len(ids), self.context_limit)
    if new_tokens != params.max_tokens:
      params = dataclasses.replace(params, max_tokens=new_tokens)
    seed = params.seed if params.seed is not None else self._rng.getrandbits(31)
    request = Request(request_id, ids, params, eos_token_ids=self.eos_token_ids,
                      cache_salt=cache_salt, priority=priority, prompt=prompt, seed=seed)
    self._requests[request_id] = request
    self.num_prompt_tokens += len(ids)
    self.scheduler.add(request)
    return request

  def abort(self, request_id: str) -> None:
    """Aborts at the next step (its last output says ABORT); unknown ids are ignored."""
    if request_id in self._requests:
      self._aborts.append(request_id)

  def has_unfinished_requests(self) -> bool:
    return bool(self._requests) or self._in_flight is not None

  # -- the step ------------------------------------------------------------------

  def step(self) -> list[CoreOutput]:
    """Schedules and dispatches step N, then lands step N-1's tokens.

    NOTE: step N is dispatched before the host blocks on step N-1's tokens, so
    host work (scheduling, detokenizing, stop checks) overlaps device work.
    Tokens of step N-1 that step N needs are read on the device (the runner's
    token buffer). A request that stopped at N-1 wastes its row in step N;
    that row's tokens are dropped.
    NOTE: with speculative decoding step N-1's tokens land first: the drafts of
    step N continue them (the device idles while the host schedules step N).
    """
    outputs = [self._finish(self._requests[rid], FinishReason.ABORT)
               for rid in dict.fromkeys(self._aborts) if rid in self._requests]
    self._aborts.clear()
    previous, self._in_flight = self._in_flight, None
    if previous is not None and self.speculative:
      outputs += self._postprocess(previous[0], previous[1].result())
      previous = None
    out = self.scheduler.schedule()
    for r in out.preempted:
      self.runner.release(r.request_id)
    outputs += [self._finish(r, FinishReason.ERROR,
                             error="prompt needs more KV blocks than the whole cache holds")
                for r in out.rejected]
    if not out.is_empty:
      self._in_flight = (out, self.runner.execute(out))     # dispatched; runs meanwhile
      self.scheduler.update(out)
      self.num_prefill_tokens_computed += sum(s.num_new_tokens for s in out.prefills)
    if previous is not None:
      outputs += self._postprocess(previous[0], previous[1].result())
    return outputs

  def _postprocess(self, out: ScheduleOutput, sampled) -> list[CoreOutput]:
    outputs = []
    for s in out.decodes + out.prefills:
      request = s.request
      if not s.samples or request.is_finished:
        continue                     # mid-prompt chunk, or stopped/aborted meanwhile
      tokens = sampled[request.request_id]    # [(token, logprob)], one per decode iteration
      if s.draft_token_ids:                   # a verify row: 1 + accepted drafts tokens
        self.num_spec_proposed_tokens += len(s.draft_token_ids)
        self.num_spec_accepted_tokens += len(tokens) - 1
        self.scheduler.reject_drafts(request, s.num_sampled - len(tokens))
      outputs.append(self._land(request, tokens))
    return outputs

  def _land(self, request: Request, tokens: list[tuple[int, float]]) -> CoreOutput:
    """A row's sampled tokens arrive: the request keeps them up to its first stop."""
    text_stop = (functools.partial(self._text_hook, request)
                 if self._text_hook is not None else None)
    kept, reason = request.land(tokens, self.max_model_len, text_stop)
    ids = [t for t, _ in kept]
    lps = [lp for _, lp in kept] if request.sampling_params.logprobs else None
    self.num_generation_tokens += len(ids)
    self.kv.cache_full_blocks(request)     # the blocks holding these tokens may be full now
    if reason is not None:
      return self._finish(request, reason, ids, lps)
    return CoreOutput(request, ids, lps)

  def _finish(self, request: Request, reason: FinishReason, token_ids=(), logprobs=None,
              error: str | None = None) -> CoreOutput:
    self.scheduler.finish(request, reason)
    self.runner.release(request.request_id)
    del self._requests[request.request_id]
    return CoreOutput(request, list(token_ids), logprobs, reason, error)
