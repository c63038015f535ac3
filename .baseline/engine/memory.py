"""How many KV blocks an engine gets, and which manager hands them out."""
from __future__ import annotations

import jax
from absl import logging

from engine.config import EngineConfig
from engine.contiguous import ContiguousKVCacheManager
from engine.kv_cache_manager import BaseKVCacheManager, KVCacheManager
from engine.runner import bytes_per_block


def _param_bytes(params) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(params))


def resolve_num_blocks(config: EngineConfig, model_config, params) -> int:
  """`config.num_blocks`, or as many blocks as the memory budget holds (+ the null block)."""
  if config.num_blocks is not None:
    return config.num_blocks
  # NOTE: per device: with tensor parallelism each device holds 1/N of the kv
  # heads of every block, and the budget below is one device's.
  per_block = (bytes_per_block(model_config, config.block_size, config.cache_dtype)
               // config.tensor_parallel)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    # NOTE: params are already on the device; keep a margin for activations.
    budget = int(free * config.kv_cache_memory_fraction)
  else:
    budget = config.kv_cache_memory_bytes
  num_blocks = max(2, budget // per_block + 1)
  logging.info("KV cache: %d blocks x %d bytes (params %.1f MB)", num_blocks, per_block,
               _param_bytes(params) / 1e6)
  return num_blocks


def build_kv_manager(config: EngineConfig, num_blocks: int) -> BaseKVCacheManager:
  if config.allocator == "contiguous":
    return ContiguousKVCacheManager(num_blocks, config.block_size)
  return KVCacheManager(num_blocks, config.block_size,
                        enable_prefix_caching=config.enable_prefix_caching)
