"""Shared builders for the experiments tests: small incident traces and simulator runs."""
from __future__ import annotations

import os

import numpy as np

from engine.config import EngineConfig
from research import metrics
from research.cost_model import ModelShape
from research.replay import ReplayOptions, replay
from research.simulator import SimBackend

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_llama.json")
TINY_SHAPE = ModelShape("tiny", num_layers=2, num_kv_heads=2, head_dim=16,
                        max_position_embeddings=4096, dtype="float32")


# Step-time coefficients that synthetic samples are made from (see synthetic_samples).
TRUTH = {"decode_launch": 2e-3, "prefill_launch": 3e-3, "decode_row": 1e-4,
         "prefill_token": 5e-5, "kv_token": 2e-7, "block": 1e-6}


def synthetic_samples(n: int, seed: int) -> list[tuple[dict[str, float], float]]:
  """`n` random cost-model feature dicts, each with its exact time under TRUTH."""
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(n):
    f = {"decode_launch": 1.0, "prefill_launch": float(rng.integers(0, 2)),
         "decode_row": float(rng.integers(1, 64)), "prefill_token": float(rng.integers(0, 512)),
         "kv_token": float(rng.integers(10, 50000)), "block": float(rng.integers(1, 3000))}
    samples.append((f, sum(TRUTH[k] * f[k] for k in TRUTH)))
  return samples


def engine_config(allocator: str, prefix: bool, num_blocks: int, block_size: int = 16,
                  max_model_len: int = 2048, max_batch_tokens: int = 256,
                  max_num_seqs: int = 32, chunked: bool = True) -> EngineConfig:
  return EngineConfig(model="random:" + TINY_CONFIG, block_size=block_size,
                      num_blocks=num_blocks, allocator=allocator,
                      enable_prefix_caching=prefix, enable_chunked_prefill=chunked,
                      max_model_len=max_model_len, max_batch_tokens=max_batch_tokens,
                      max_num_seqs=max_num_seqs, allow_small_kv_cache=True)


def simulate(trace, config: EngineConfig, options: ReplayOptions = ReplayOptions()):
  """Replays `trace` in the simulator; returns (summary row, raw log)."""
  log = replay(SimBackend(config, TINY_SHAPE, config.num_blocks, vocab_size=512), trace,
               options)
  return metrics.summarize(log), log
