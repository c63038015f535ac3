"""The KV write as a Pallas kernel lowered through Triton, in place.

Grid: (num_tokens, num_kv_heads). One program reads its token's slot, then
stores one [head_dim] K vector and one [head_dim] V vector into its KV head's
cache block at that slot. The per-program tensors are only [head_dim] (64 or
128, a power of two as Triton requires), so any num_kv_heads works (e.g. 3).

The cache is passed as one ref whose BlockSpec spans the whole block axis of
one KV head (as in decode_triton.py); the kernel indexes it with the block
and offset computed from the slot. Its output aliases that input
(`input_output_aliases`), so the kernel stores straight into the cache
buffer: inside a jitted step with the cache donated no copy is made, and the
only memory traffic is the 2 * num_tokens * num_kv_heads * head_dim elements
written (plus reading k, v and the slots).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Position of the cache among the pallas_call operands (slots, k, v, cache).
_CACHE_INPUT = 3


def _write_kv_kernel(slot_ref, k_ref, v_ref, cache_in_ref, cache_ref):
  """One (token, kv head) program; see the module docstring.

  slot_ref [1] int32; k_ref, v_ref [head_dim]; cache_in_ref and cache_ref
  [num_blocks, 2, block_size, head_dim] (this program's KV head).
  """
  del cache_in_ref  # Same buffer as cache_ref (aliased); written through it.
  block_size = cache_ref.shape[2]
  slot = slot_ref[0]
  block = slot // block_size
  offset = slot % block_size
  # NOTE: real tokens have distinct slots, so no two programs store to the
  # same element; padded tokens may collide in the null block 0, which no
  # sequence reads, so whichever store lands there is fine.
  cache_ref[block, 0, offset, :] = k_ref[...].astype(cache_ref.dtype)
  cache_ref[block, 1, offset, :] = v_ref[...].astype(cache_ref.dtype)


@functools.partial(jax.jit, static_argnames=("num_warps", "interpret"))
def write_kv_triton(kv_cache, k, v, slot_mapping, *, num_warps=1,
                    interpret=False):
  """Runs the kernel; arguments as `write_kv`, pre-validated.

  Returns the updated cache (the same buffer as `kv_cache` when the caller
  donates it; otherwise XLA copies the input first to keep it intact).
  """
  num_blocks, _, _, block_size, d = kv_cache.shape
  num_tokens, hkv, _ = k.shape
  if num_tokens == 0:
    return kv_cache
  token_spec = pl.BlockSpec((None, None, d), lambda t, h: (t, h, 0))
  cache_spec = pl.BlockSpec((num_blocks, None, 2, block_size, d),
                            lambda t, h: (0, h, 0, 0, 0))
  return pl.pallas_call(
      _write_kv_kernel,
      grid=(num_tokens, hkv),
      in_specs=[
          pl.BlockSpec((None, 1), lambda t, h: (t, 0)),  # slot of t: [1]
          token_spec,  # k of (t, h): [head_dim]
          token_spec,  # v of (t, h): [head_dim]
          cache_spec,  # cache of head h: [num_blocks, 2, block_size, d]
      ],
      out_specs=cache_spec,  # the same view of the aliased output
      out_shape=jax.ShapeDtypeStruct(kv_cache.shape, kv_cache.dtype),
      input_output_aliases={_CACHE_INPUT: 0},
      compiler_params=plgpu.CompilerParams(num_warps=num_warps,
                                           num_stages=1),
      interpret=interpret,
      name="write_kv_triton",
  )(slot_mapping.reshape(num_tokens, 1), k, v, kv_cache)
