"""Writing the step's new K/V into their cache slots, in place.

The write is an XLA scatter with `.set` (never a scatter-add): inside a jitted
step whose cache argument is donated, XLA updates the buffer in place, so no
copy of the cache is made. It is the same on every backend; a Pallas version
would only move the same bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import backend as backend_lib
from pallas_kernels import validation


def _write(kv_cache, k, v, slot_mapping):
  block_size = kv_cache.shape[3]
  blocks = slot_mapping // block_size  # [num_tokens]
  offsets = slot_mapping % block_size  # [num_tokens]
  kv = jnp.stack([k, v], axis=2).astype(kv_cache.dtype)  # [n, hkv, 2, d]
  # NOTE: advanced indices on axes 0 and 3 are separated by slices, so the
  # indexed view has shape [num_tokens, kv_heads, 2, head_dim], matching kv.
  # Real tokens have distinct slots; padded tokens may collide in block 0.
  return kv_cache.at[blocks, :, :, offsets, :].set(
      kv, mode="promise_in_bounds", unique_indices=False
  )


def write_kv_reference(
    kv_cache: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array
) -> jax.Array:
  """Returns kv_cache with k/v [num_tokens, kv_heads, head_dim] at their slots.

  Slot s is block s // block_size, offset s % block_size.
  """
  validation.check_write_args(kv_cache, k, v, slot_mapping)
  return _write(kv_cache, k, v, slot_mapping)


def write_kv(
    kv_cache: jax.Array,
    k: jax.Array,
    v: jax.Array,
    slot_mapping: jax.Array,
    *,
    backend: str | None = None,
) -> jax.Array:
  """Public KV write; `backend` is validated but all backends share XLA's."""
  backend_lib.resolve_backend(backend)
  return write_kv_reference(kv_cache, k, v, slot_mapping)
