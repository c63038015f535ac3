"""An engine's shape buckets from its config and model config, without building it.

`LLMEngine` sizes its buckets here, and tests and benchmarks count the planned
step shapes of a configuration (`plan(buckets_for(...), ...)`) without loading
weights or compiling anything.
"""
from __future__ import annotations

import pallas_kernels
from engine.buckets import Buckets, StepShape, plan
from engine.config import EngineConfig

DEFAULT_MAX_MODEL_LEN = 4096


def max_model_len(config: EngineConfig, model_config) -> int:
  """The engine's context: the config's, else the model's capped at 4096; never past the model's."""
  limit = model_config.max_position_embeddings
  return min(config.max_model_len or min(limit, DEFAULT_MAX_MODEL_LEN), limit)


def step_tokens(config: EngineConfig, context: int) -> int:
  """Tokens one step may schedule: the budget, or a whole prompt without chunked prefill."""
  if config.enable_chunked_prefill:
    return config.max_batch_tokens
  return max(config.max_batch_tokens, context)


def buckets_for(config: EngineConfig, model_config) -> Buckets:
  """The buckets of an engine with `config` over a model with `model_config`.

  NOTE: the block-table width is a bucket axis only for an attention backend
  whose cost grows with it (`pallas_kernels.reads_whole_block_table`).
  """
  context = max_model_len(config, model_config)
  return Buckets.create(
      max_num_seqs=config.max_num_seqs, max_batch_tokens=step_tokens(config, context),
      max_model_len=context, block_size=config.block_size,
      width_buckets=pallas_kernels.reads_whole_block_table(config.attention_backend))


def planned_shapes(config: EngineConfig, model_config) -> tuple[StepShape, ...]:
  """Every step shape such an engine compiles (what its warm-up does), computed on the host."""
  return plan(buckets_for(config, model_config), config.num_decode_steps)
