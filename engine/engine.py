"""`LLMEngine`: add requests, `step()` them (schedule → run → postprocess), abort them.

The loop itself is `engine.core.EngineCore` over the device `ModelRunner`; the
engine adds the model, the tokenizer and the text of each request.
Not thread-safe: one thread owns an engine (the gRPC server runs it in its own
loop thread and only enqueues).
"""
from __future__ import annotations

import dataclasses

from absl import logging

from engine import compile_cache, context_limit, parallel, prompts, shape_plan, warmup_progress
from engine import output_processor as op
from engine.config import EngineConfig
from engine.core import CoreOutput, EngineCore, SchedulerFactory
from engine.kv_budget import resolve_num_blocks
from engine.outputs import TokenDelta
from engine.request import Request
from engine.runner import CacheConfig, ModelRunner
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler


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
  num_compilations: int                  # step executables built (warm-up included)
  compile_seconds: float                 # seconds spent building them
  spec_proposed_tokens_total: int = 0    # draft tokens verified (speculative decoding)
  spec_accepted_tokens_total: int = 0    # of those, accepted (before stops and limits)


class LLMEngine:
  """Continuous-batching engine over a paged (or contiguous) KV cache.

  `scheduler_factory(SchedulerConfig, kv manager, draft proposer or None)` builds its
  scheduler (research runs pass a recording subclass).
  """

  def __init__(self, config: EngineConfig = EngineConfig(), model=None,
               scheduler_factory: SchedulerFactory = Scheduler):
    self.config = config
    # NOTE: before anything compiles; process-wide (see engine/compile_cache.py).
    self.compilation_cache_dir = compile_cache.configure(config.compilation_cache_dir)
    # NOTE: None for tensor_parallel=1; else the per-engine ("tp",) mesh, and
    # the params are placed shard by shard on it before the KV cache is sized.
    self.mesh = parallel.make_mesh(config.tensor_parallel)
    self.model = (parallel.load_model_sharded(config.model, config.dtype, self.mesh)
                  if model is None else parallel.place_model(model, self.mesh))
    self.tokenizer = self.model.tokenizer
    mc = self.model.config
    num_blocks, sized_by = resolve_num_blocks(config, mc, self.model.params)
    limit = context_limit.resolve(
        config.max_model_len, mc.max_position_embeddings, num_blocks, config.block_size,
        sized_by, allow_small_kv_cache=config.allow_small_kv_cache)
    buckets = shape_plan.buckets_for(config, limit.tokens)
    self.runner = ModelRunner(self.model, CacheConfig(num_blocks, config.block_size,
                                                      config.cache_dtype),
                              buckets, backend=config.attention_backend, mesh=self.mesh,
                              max_num_seqs=config.max_num_seqs,
                              num_decode_steps=config.num_decode_steps,
                              num_speculative_tokens=config.speculative_tokens,
                              cache_dir=self.compilation_cache_dir)
    self.core = EngineCore(config, num_blocks, limit, self.runner,
                           eos_token_ids=tuple(mc.eos_token_ids),
                           scheduler_factory=scheduler_factory, text_hook=self._push_text)
    self.context_limit = limit
    self.max_model_len = limit.tokens
    self.kv = self.core.kv
    self.scheduler = self.core.scheduler
    self._text: dict[str, op.RequestTextState] = {}
    logging.info("engine: %d KV blocks of %d tokens, %s", num_blocks, config.block_size,
                 limit.describe())
    if config.warmup:
      self.warmup()

  def planned_shapes(self):
    """Every step shape this engine can run (`engine.buckets.StepShape`s): what `warmup`
    compiles, listed without compiling."""
    return self.runner.planned_shapes()

  def warmup(self, show_progress: bool = False, threads: int | None = None) -> None:
    """Compiles every planned step shape (`runner.planned_shapes()`) now, so that serving
    never compiles; logs each one (absl INFO) and, with `show_progress`, draws a tqdm bar
    on stderr. Afterwards a compile logs a WARNING: it is a bug."""
    with warmup_progress.WarmupProgress(len(self.planned_shapes()),
                                        show_progress) as progress:
      self.runner.warmup(threads=threads, progress=progress)

  # -- requests ----------------------------------------------------------------

  def add_request(self, request_id: str, prompt: str | None = None,
                  sampling_params: SamplingParams | None = None, *,
                  prompt_token_ids: list[int] | None = None, cache_salt: str | None = None,
                  priority: int = 0) -> list[int]:
    """Queues a request and returns its prompt token ids.

    Raises ValueError (and queues nothing) for bad input.
    """
    self.core.check_new_id(request_id)
    ids = self._prompt_ids(prompt, prompt_token_ids)
    request = self.core.add_request(request_id, ids, sampling_params, cache_salt=cache_salt,
                                    priority=priority, prompt=prompt)
    self._text[request_id] = op.RequestTextState(request, self.tokenizer)
    return ids

  def _prompt_ids(self, prompt, prompt_token_ids) -> list[int]:
    if (prompt is None) == (prompt_token_ids is None):
      raise ValueError("give exactly one of prompt and prompt_token_ids")
    if prompt_token_ids is not None:
      return prompts.check_token_ids(prompt_token_ids, self.model.config.vocab_size)
    if not prompt:
      raise ValueError("prompt is empty")
    if self.tokenizer is None:
      raise ValueError("this model has no tokenizer: pass prompt_token_ids")
    return prompts.encode_prompt(self.tokenizer, prompt)

  def abort(self, request_id: str) -> None:
    """Aborts at the next step (its final delta says ABORT); unknown ids are ignored."""
    self.core.abort(request_id)

  def has_unfinished_requests(self) -> bool:
    return self.core.has_unfinished_requests()

  # -- the step ------------------------------------------------------------------

  def step(self) -> list[TokenDelta]:
    """One `EngineCore.step()` (dispatch step N, land step N-1), its outputs as text deltas."""
    return [self._delta(o) for o in self.core.step()]

  def _push_text(self, request: Request, token_ids: list[int]) -> int | None:
    return self._text[request.request_id].push_until_stop(token_ids)

  def _delta(self, o: CoreOutput) -> TokenDelta:
    rid = o.request.request_id
    state = self._text.pop(rid) if o.finished else self._text[rid]
    return op.make_delta(state, o.token_ids, o.logprobs, o.finish_reason, o.error)

  # -- introspection ------------------------------------------------------------

  def stats(self) -> EngineStats:
    pc = self.kv.prefix_cache_stats
    core = self.core
    return EngineStats(
        num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
        kv_blocks_used=self.kv.num_used_blocks, kv_blocks_total=self.kv.num_total_blocks,
        prefix_query_tokens_total=pc.num_query_tokens,
        prefix_hit_tokens_total=pc.num_hit_tokens,
        num_preemptions_total=self.scheduler.num_preemptions,
        prompt_tokens_total=core.num_prompt_tokens,
        prefill_tokens_computed_total=core.num_prefill_tokens_computed,
        generation_tokens_total=core.num_generation_tokens,
        num_compilations=self.runner.num_compilations,
        compile_seconds=self.runner.compile_seconds,
        spec_proposed_tokens_total=core.num_spec_proposed_tokens,
        spec_accepted_tokens_total=core.num_spec_accepted_tokens)
