"""Shared builders for the experiments tests: small incident traces and simulator runs."""
from __future__ import annotations

import os

from engine.config import EngineConfig
from engine.experiments import metrics
from engine.experiments.cost_model import ModelShape
from engine.experiments.replay import ReplayOptions, replay
from engine.experiments.simulator import SimBackend, SimulatedEngine

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_llama.json")
TINY_SHAPE = ModelShape("tiny", num_layers=2, num_kv_heads=2, head_dim=16,
                        max_position_embeddings=4096, dtype="float32")


def engine_config(allocator: str, prefix: bool, num_blocks: int, block_size: int = 16,
                  max_model_len: int = 2048, max_batch_tokens: int = 256,
                  max_num_seqs: int = 32, chunked: bool = True) -> EngineConfig:
  return EngineConfig(model="random:" + TINY_CONFIG, block_size=block_size,
                      num_blocks=num_blocks, allocator=allocator,
                      enable_prefix_caching=prefix, enable_chunked_prefill=chunked,
                      max_model_len=max_model_len, max_batch_tokens=max_batch_tokens,
                      max_num_seqs=max_num_seqs)


def simulate(trace, config: EngineConfig, options: ReplayOptions = ReplayOptions()):
  """Replays `trace` in the simulator; returns (summary row, raw log)."""
  engine = SimulatedEngine(config, TINY_SHAPE, config.num_blocks, vocab_size=512)
  log = replay(SimBackend(engine, None), trace, options)
  return metrics.summarize(log), log
