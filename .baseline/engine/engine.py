"""`LLMEngine`: add requests, `step()` them (schedule → run → postprocess), abort them.

Not thread-safe: one thread owns an engine (the gRPC server runs it in its own
loop thread and only enqueues).
"""
from __future__ import annotations

import dataclasses
import random

from absl import logging

from engine import output_processor as op
from engine import parallel
from engine.buckets import Buckets
from engine.config import EngineConfig
from engine.memory import build_kv_manager, resolve_num_blocks
from engine.outputs import FinishReason, TokenDelta
from engine.request import Request
from engine.runner import CacheConfig, ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduleOutput, Scheduler, SchedulerConfig


@dataclasses.dataclass
class EngineStats:
  num_running: int
  num_waiting: int
  kv_blocks_used: int
  kv_blocks_total: int
  prefix_query_tokens_total: int
  prefix_hit_tokens_total: int
  num_preemptions_total: int
  prompt_tokens_total: int
  prefill_tokens_computed_total: int     # includes recomputation after preemption
  generation_tokens_total: int
  num_compilations: int


class LLMEngine:
  """Continuous-batching engine over a paged (or contiguous) KV cache."""

  def __init__(self, config: EngineConfig = EngineConfig(), model=None):
    self.config = config
    # NOTE: None for tensor_parallel=1; else the per-engine ("tp",) mesh, and
    # the params are placed shard by shard on it before the KV cache is sized.
    self.mesh = parallel.make_mesh(config.tensor_parallel)
    self.model = (parallel.load_model_sharded(config.model, config.dtype, self.mesh)
                  if model is None else parallel.place_model(model, self.mesh))
    self.tokenizer = self.model.tokenizer
    mc = self.model.config
    self.max_model_len = min(config.max_model_len or min(mc.max_position_embeddings, 4096),
                             mc.max_position_embeddings)
    num_blocks = resolve_num_blocks(config, mc, self.model.params)
    self.kv = build_kv_manager(config, num_blocks)
    self.scheduler = Scheduler(self._scheduler_config(), self.kv)
    buckets = Buckets.create(max_num_seqs=config.max_num_seqs,
                             max_batch_tokens=self._step_tokens(),
                             max_model_len=self.max_model_len, block_size=config.block_size)
    self.runner = ModelRunner(self.model, CacheConfig(num_blocks, config.block_size,
                                                      config.cache_dtype),
                              buckets, backend=config.attention_backend, mesh=self.mesh,
                              max_num_seqs=config.max_num_seqs,
                              num_decode_steps=config.num_decode_steps)
    self._requests: dict[str, Request] = {}
    self._text: dict[str, op.RequestTextState] = {}
    self._aborts: list[str] = []
    self._in_flight: tuple[ScheduleOutput, object] | None = None   # dispatched, not yet read
    self._rng = random.Random(config.seed)
    self._prompt_tokens_total = 0
    self._prefill_tokens_computed = 0
    self._generation_tokens_total = 0
    logging.info("engine: %d KV blocks of %d tokens, max_model_len %d", num_blocks,
                 config.block_size, self.max_model_len)
    if config.warmup:
      self.runner.warmup()

  def _step_tokens(self) -> int:
    c = self.config
    return c.max_batch_tokens if c.enable_chunked_prefill else max(c.max_batch_tokens,
                                                                   self.max_model_len)

  def _scheduler_config(self) -> SchedulerConfig:
    c = self.config
    return SchedulerConfig(max_model_len=self.max_model_len, max_num_seqs=c.max_num_seqs,
                           max_batch_tokens=self._step_tokens(),
                           enable_chunked_prefill=c.enable_chunked_prefill,
                           watermark=c.watermark, num_decode_steps=c.num_decode_steps)

  # -- requests ----------------------------------------------------------------

  def add_request(self, request_id: str, prompt: str | None = None,
                  sampling_params: SamplingParams | None = None, *,
                  prompt_token_ids: list[int] | None = None, cache_salt: str | None = None,
                  priority: int = 0) -> list[int]:
    """Queues a request and returns its prompt token ids.

    Raises ValueError (and queues nothing) for bad input.
    """
    if request_id in self._requests:
      raise ValueError(f"request id {request_id!r} is already in use")
    params = sampling_params or SamplingParams()
    ids = self._prompt_ids(prompt, prompt_token_ids)
    if len(ids) + 1 > self.max_model_len:
      raise ValueError(f"prompt has {len(ids)} tokens; with one generated token that exceeds "
                       f"the model's context of {self.max_model_len} tokens")
    eos = tuple(self.model.config.eos_token_ids)
    seed = params.seed if params.seed is not None else self._rng.getrandbits(31)
    request = Request(request_id, ids, params, eos_token_ids=eos, cache_salt=cache_salt,
                      priority=priority, prompt=prompt, seed=seed)
    self._requests[request_id] = request
    self._prompt_tokens_total += len(ids)
    self._text[request_id] = op.RequestTextState(request, self.tokenizer)
    self.scheduler.add(request)
    return ids

  def _prompt_ids(self, prompt, prompt_token_ids) -> list[int]:
    if (prompt is None) == (prompt_token_ids is None):
      raise ValueError("give exactly one of prompt and prompt_token_ids")
    if prompt is not None:
      if not prompt:
        raise ValueError("prompt is empty")
      if self.tokenizer is None:
        raise ValueError("this model has no tokenizer: pass prompt_token_ids")
      return self.tokenizer.encode(prompt)
    ids = [int(t) for t in prompt_token_ids]
    if not ids:
      raise ValueError("prompt_token_ids is empty")
    vocab = self.model.config.vocab_size
    if any(not 0 <= t < vocab for t in ids):
      raise ValueError(f"prompt_token_ids must lie in [0, {vocab})")
    return ids

  def abort(self, request_id: str) -> None:
    """Aborts at the next step (its final delta says ABORT); unknown ids are ignored."""
    if request_id in self._requests:
      self._aborts.append(request_id)

  def has_unfinished_requests(self) -> bool:
    return bool(self._requests) or self._in_flight is not None

  # -- the step ------------------------------------------------------------------

  def step(self) -> list[TokenDelta]:
    """Schedules and dispatches step N, then reads back step N-1's tokens.

    NOTE: step N is on the device before the host blocks on step N-1's tokens,
    so host work (scheduling, detokenizing, stop checks) overlaps device work.
    Tokens of step N-1 that step N needs are read on the device (runner's token
    buffer). A request that stopped at N-1 wastes its row in step N; that
    row's token is dropped.
    """
    deltas = [self._finish(self._requests[rid], FinishReason.ABORT)
              for rid in dict.fromkeys(self._aborts) if rid in self._requests]
    self._aborts.clear()
    out = self.scheduler.schedule()
    for r in out.preempted:
      self.runner.release(r.request_id)
    deltas += [self._finish(r, FinishReason.ERROR,
                            error="prompt needs more KV blocks than the whole cache holds")
               for r in out.rejected]
    previous, self._in_flight = self._in_flight, None
    if not out.is_empty:
      self._in_flight = (out, self.runner.execute(out))     # dispatched; runs on the device
      self.scheduler.update(out)
      self._prefill_tokens_computed += sum(s.num_new_tokens for s in out.prefills)
    if previous is not None:
      deltas += self._postprocess(previous[0], previous[1].result())
    return deltas

  def _postprocess(self, out: ScheduleOutput, sampled) -> list[TokenDelta]:
    deltas = []
    for s in out.decodes + out.prefills:
      request = s.request
      if not s.samples or request.is_finished:
        continue                     # mid-prompt chunk, or stopped/aborted meanwhile
      tokens = sampled[request.request_id]     # [(token, logprob)], one per decode iteration
      request.num_pending_tokens -= len(tokens)
      deltas.append(self._land(request, tokens))
    return deltas

  def _land(self, request: Request, tokens: list[tuple[int, float]]) -> TokenDelta:
    """Appends a row's sampled tokens up to the first stop; the rest are dropped."""
    state = self._text[request.request_id]
    token_ids = [t for t, _ in tokens]
    if request.sampling_params.stop and state.detok is not None:
      n, reason = self._stop_on_text(request, state, token_ids)
    else:
      n, reason = op.accepted(request, token_ids, self.max_model_len)
      state.push(token_ids[:n - 1] if reason == FinishReason.STOP else token_ids[:n])
    ids = token_ids[:n]            # NOTE: a stop token is kept in ids, never in the text
    lps = [lp for _, lp in tokens[:n]] if request.sampling_params.logprobs else None
    request.output_token_ids.extend(ids)
    request.output_logprobs.extend(lps or ())
    self._generation_tokens_total += n
    self.kv.cache_full_blocks(request)     # the blocks holding these tokens may be full now
    if reason is not None:
      return self._finish(request, reason, token_ids=ids, logprobs=lps)
    return op.make_delta(state, ids, lps, None)

  def _stop_on_text(self, request: Request, state: op.RequestTextState,
                    token_ids: list[int]) -> tuple[int, FinishReason | None]:
    """`op.accepted` for a request with stop strings: the text, token by token, may stop
    it earlier."""
    n, reason = op.accepted(request, token_ids, self.max_model_len)
    for i, token in enumerate(token_ids[:n]):
      if not op.is_stop_token(request, token):
        state.push([token])
      if state.stopped:     # NOTE: a token-id stop or the length limit on the same token wins
        return i + 1, reason if i + 1 == n and reason is not None else FinishReason.STOP
    return n, reason

  def _finish(self, request: Request, reason: FinishReason, token_ids=(), logprobs=None,
              error: str | None = None) -> TokenDelta:
    self.scheduler.finish(request, reason)
    self.runner.release(request.request_id)
    state = self._text.pop(request.request_id)
    del self._requests[request.request_id]
    return op.make_delta(state, list(token_ids), logprobs, reason, error)

  # -- introspection ------------------------------------------------------------

  def stats(self) -> EngineStats:
    pc = self.kv.prefix_cache_stats
    return EngineStats(
        num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
        kv_blocks_used=self.kv.num_used_blocks, kv_blocks_total=self.kv.num_total_blocks,
        prefix_query_tokens_total=pc.num_query_tokens,
        prefix_hit_tokens_total=pc.num_hit_tokens,
        num_preemptions_total=self.scheduler.num_preemptions,
        prompt_tokens_total=self._prompt_tokens_total,
        prefill_tokens_computed_total=self._prefill_tokens_computed,
        generation_tokens_total=self._generation_tokens_total,
        num_compilations=self.runner.num_compilations)
