"""An engine's shape buckets from its config and model config, without building it.

`LLMEngine` sizes its buckets here, and tests and benchmarks count the planned
step shapes of a configuration (`plan(buckets_for(...), ...)`) without loading
weights or compiling anything.
"""
from __future__ import annotations

import pallas_kernels
from engine import context_limit
from engine.buckets import Buckets, StepShape, plan
from engine.config import EngineConfig
from engine.scheduler import step_tokens


def max_model_len(config: EngineConfig, model_config, num_blocks: int | None = None) -> int:
  """The engine's context (`context_limit.resolve`'s rule); with `num_blocks` None (the
  cache not sized yet) without the KV-cache cap."""
  return context_limit.resolve(
      config.max_model_len, model_config.max_position_embeddings, num_blocks or 2,
      config.block_size, "--num-blocks",
      allow_small_kv_cache=config.allow_small_kv_cache or num_blocks is None).tokens


def buckets_for(config: EngineConfig, context: int) -> Buckets:
  """The buckets of an engine with `config` and a `max_model_len` of `context` tokens.

  NOTE: the block-table width is a bucket axis only for an attention backend
  whose cost grows with it (`pallas_kernels.reads_whole_block_table`).
  """
  return Buckets.create(
      max_num_seqs=config.max_num_seqs, max_batch_tokens=step_tokens(config, context),
      max_model_len=context, block_size=config.block_size,
      width_buckets=pallas_kernels.reads_whole_block_table(config.attention_backend))


def planned_shapes(config: EngineConfig, model_config, num_blocks: int | None = None
                   ) -> tuple[StepShape, ...]:
  """Every step shape such an engine compiles (what its warm-up does), computed on the host."""
  return plan(buckets_for(config, max_model_len(config, model_config, num_blocks)),
              config.num_decode_steps, config.speculative_tokens)
