"""Which KV manager hands an engine's blocks out (host-only: no JAX)."""
from __future__ import annotations

from engine.config import EngineConfig
from engine.contiguous import ContiguousKVCacheManager
from engine.kv_cache_manager import BaseKVCacheManager, KVCacheManager


def build_kv_manager(config: EngineConfig, num_blocks: int) -> BaseKVCacheManager:
  if config.allocator == "contiguous":
    return ContiguousKVCacheManager(num_blocks, config.block_size)
  return KVCacheManager(num_blocks, config.block_size,
                        enable_prefix_caching=config.enable_prefix_caching)
