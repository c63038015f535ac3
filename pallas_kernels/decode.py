"""Public paged decode attention: validation and backend dispatch."""

from __future__ import annotations

import dataclasses

import jax

from pallas_kernels import backend as backend_lib
from pallas_kernels import decode_mosaic
from pallas_kernels import quantization
from pallas_kernels import tuning
from pallas_kernels import validation
from pallas_kernels.decode_reference import paged_decode_attention_reference
from pallas_kernels.decode_triton import decode_triton


def paged_decode_attention(
    q: jax.Array,
    kv_cache: jax.Array,
    block_tables: jax.Array,
    lengths: jax.Array,
    *,
    scale: float | None = None,
    backend: str | None = None,
    num_splits: int | None = None,
    interpret: bool = False,
) -> jax.Array:
  """Attention of one new token per row over its paged KV cache.

  Args:
    q: [batch, num_q_heads, head_dim]; query head h uses KV head
      h // (num_q_heads // num_kv_heads).
    kv_cache: [num_blocks, num_kv_heads, 2, block_size, head_dim] (K at 0,
      V at 1 on axis 2), bfloat16 or float32; or a `QuantizedKV` (int8 or
      uint8 float8_e4m3fn bits in that layout, float32 scales [num_blocks,
      num_kv_heads, 2, block_size]), dequantized on the fly.
    block_tables: int32 [batch, max_blocks_per_seq].
    lengths: int32 [batch]: cached tokens including the current one (already
      written); 0 marks a padding row, which outputs zeros and reads nothing.
    scale: softmax scale, default head_dim ** -0.5.
    backend: None (platform default), "triton", "mosaic" or "xla".
    num_splits: split-K factor for the GPU kernel; None = heuristic.
    interpret: run the Pallas kernel in interpret mode (CPU tests).

  Returns:
    [batch, num_q_heads, head_dim] in q's dtype.
  """
  validation.check_decode_args(q, kv_cache, block_tables, lengths)
  backend = backend_lib.resolve_backend(backend)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  if num_splits is not None and num_splits < 1:
    raise ValueError(f"num_splits must be >= 1, got {num_splits}")
  if backend == "xla":
    return paged_decode_attention_reference(
        q, kv_cache, block_tables, lengths, scale=scale)
  if backend == "mosaic":
    mosaic = _mosaic_config(q, kv_cache, block_tables, num_splits)
    if mosaic is not None:
      return decode_mosaic.decode_mosaic(q, kv_cache, block_tables, lengths,
                                         scale=float(scale), config=mosaic,
                                         interpret=interpret)
  cfg = _triton_config(q, kv_cache, block_tables)
  return decode_triton(
      q, kv_cache, block_tables, lengths, scale=float(scale),
      num_splits=num_splits or cfg.num_splits, pages_per_step=cfg.pages_per_step,
      num_warps=cfg.num_warps, num_stages=cfg.num_stages, interpret=interpret)


def _problem_class(q, kv_cache, block_tables) -> tuple:
  """(device kind, batch, kv heads, table width, block size, head_dim, itemsize): what the
  tuning tables are keyed by."""
  values = quantization.values_of(kv_cache)
  _, hkv, _, block_size, _ = values.shape
  return (jax.devices()[0].device_kind, q.shape[0], hkv, block_tables.shape[1], block_size,
          q.shape[-1], values.dtype.itemsize)


def _mosaic_config(q, kv_cache, block_tables, num_splits):
  """The Mosaic decode's tiling (the table's, else heuristics; an explicit num_splits
  overrides the split), or None where it does not run: float32 caches, head_dim % 64
  != 0, and 8-bit caches the device's table has not measured faster than Triton."""
  problem = _problem_class(q, kv_cache, block_tables)
  name = quantization.name_of(kv_cache)
  # NOTE: an 8-bit cache takes the Mosaic decode (decode_mosaic_q8.py) only where
  # its nearest table entry beat the Triton kernel in the same run (on the H200 int8
  # lost at 256 x 1024 until 2026-12-03, docs/benchmarks.md); no table, no claim.
  if quantization.is_quantized(kv_cache):
    entry = tuning.decode_mosaic_entry(*problem[:6], name)
    if entry is None or not entry["us"] < entry["triton_us"]:
      return None
  cfg = tuning.decode_mosaic_config(*problem, kv_cache_dtype=name)
  if num_splits is not None:
    cfg = dataclasses.replace(cfg, num_splits=num_splits)
  return cfg if decode_mosaic.supports(q, kv_cache, cfg) else None


def _triton_config(q, kv_cache, block_tables) -> tuning.DecodeConfig:
  """The Triton decode's tiling.

  NOTE: from the device's measured table (pallas_kernels/tuning/), else from the shape
  heuristics. An 8-bit cache (itemsize 1) has no table entries yet: the heuristics.
  """
  return tuning.decode_config(*_problem_class(q, kv_cache, block_tables))
