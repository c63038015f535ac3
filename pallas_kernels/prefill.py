"""Public paged prefill attention: validation and backend dispatch."""

from __future__ import annotations

import jax
from jax.experimental import pallas as pl

from pallas_kernels import backend as backend_lib
from pallas_kernels import heuristics
from pallas_kernels import prefill_mosaic
from pallas_kernels import prefill_mosaic_q8
from pallas_kernels import quantization
from pallas_kernels import tuning
from pallas_kernels import validation
from pallas_kernels.prefill_reference import paged_prefill_attention_reference
from pallas_kernels.prefill_triton import prefill_triton


def paged_prefill_attention(
    q: jax.Array,
    kv_cache: jax.Array,
    block_tables: jax.Array,
    cu_q_lens: jax.Array,
    kv_lens: jax.Array,
    *,
    scale: float | None = None,
    backend: str | None = None,
    interpret: bool = False,
) -> jax.Array:
  """Causal attention of packed new tokens to their sequences' paged cache.

  Args:
    q: [num_tokens, num_q_heads, head_dim]; sequences packed back to back,
      then padding (which outputs zeros).
    kv_cache: [num_blocks, num_kv_heads, 2, block_size, head_dim], already
      holding this chunk's K/V; or a `QuantizedKV` (see paged_decode_attention),
      dequantized on the fly.
    block_tables: int32 [num_seqs, max_blocks_per_seq].
    cu_q_lens: int32 [num_seqs + 1], cu_q_lens[0] == 0; padded sequences
      have q_len 0.
    kv_lens: int32 [num_seqs]: cached tokens including this chunk. New token
      i of sequence s sits at position kv_lens[s] - q_len[s] + i and sees
      positions 0..that position.
    scale: softmax scale, default head_dim ** -0.5.
    backend: None (platform default), "triton", "mosaic" or "xla".
    interpret: run the Pallas kernel in interpret mode (CPU tests).

  Returns:
    [num_tokens, num_q_heads, head_dim] in q's dtype.
  """
  validation.check_prefill_args(q, kv_cache, block_tables, cu_q_lens, kv_lens)
  backend = backend_lib.resolve_backend(backend)
  if scale is None:
    scale = q.shape[-1] ** -0.5
  if backend == "xla":
    return paged_prefill_attention_reference(
        q, kv_cache, block_tables, cu_q_lens, kv_lens, scale=scale)
  # NOTE: "mosaic" runs the Mosaic GPU kernel where prefill_mosaic.supports()
  # (16-bit caches, head_dim % 64 == 0, groups <= 16, shared memory fits) or,
  # for 8-bit caches and a bf16 q, where _mosaic_q8 says so (its memory
  # warpgroup converts the 8-bit tiles); float32 caches, other shapes and
  # unmeasured 8-bit ones fall back to the Triton kernel.
  config = heuristics.prefill_mosaic_config(q.shape[-1])
  kernel = (prefill_mosaic_q8.prefill_mosaic_q8 if _mosaic_q8(q, kv_cache, config)
            else prefill_mosaic.prefill_mosaic
            if prefill_mosaic.supports(q, kv_cache, config) else None)
  if backend == "mosaic" and kernel is not None:
    return kernel(q, kv_cache, block_tables, cu_q_lens, kv_lens,
                  scale=float(scale), config=config, interpret=interpret)
  return _prefill_triton(q, kv_cache, block_tables, cu_q_lens, kv_lens,
                         float(scale), interpret)


def _mosaic_q8(q, kv_cache, config) -> bool:
  """Whether an 8-bit cache takes the Mosaic prefill: supported, and the
  device's tuning table timed it faster than Triton for this KV dtype.

  NOTE: as for the 8-bit decode (decode.py): no table, no measurement, no
  dispatch; until a GPU run writes the entries the Triton kernel runs.
  """
  if not prefill_mosaic_q8.supports(q, kv_cache, config):
    return False
  return tuning.prefill_mosaic_q8_measured_faster(
      jax.devices()[0].device_kind, q.shape[-1], quantization.name_of(kv_cache))


def _prefill_triton(q, kv_cache, block_tables, cu_q_lens, kv_lens, scale,
                    interpret):
  """The Triton kernel with its heuristic tiling."""
  _, hkv, _, block_size, _ = quantization.values_of(kv_cache).shape
  group_pad = pl.next_power_of_2(q.shape[1] // hkv)
  # NOTE: an 8-bit cache's tiles are converted to q's dtype in the kernel, so the
  # tiling follows the 16-bit one (or float32's, for float32 queries).
  itemsize = (q.dtype.itemsize if quantization.is_quantized(kv_cache)
              else kv_cache.dtype.itemsize)
  pages = heuristics.prefill_pages_per_step(block_size, itemsize)
  return prefill_triton(
      q, kv_cache, block_tables, cu_q_lens, kv_lens, scale=scale,
      block_q=heuristics.prefill_block_q(group_pad, itemsize),
      pages_per_step=pages,
      num_warps=4 if itemsize > 2 else 8,
      num_stages=heuristics.num_stages(
          pages * block_size, q.shape[-1], itemsize),
      interpret=interpret)
