"""8-bit KV caches: the (values, scales) pytree and the one quantization rule.

A quantized cache is `QuantizedKV(values, scales)`:
  values [num_blocks, num_kv_heads, 2, block_size, head_dim]  int8 or float8_e4m3fn
  scales [num_blocks, num_kv_heads, 2, block_size]            float32
one scale per (token slot, KV head, K|V): the vector's absolute maximum over
head_dim divided by the format's largest value, so `value * scale` is the
stored vector. Per token rather than per block: a block is written one token
at a time by decode, so a per-block scale would have to be fixed before the
block's later tokens are known (or the block requantized as it grows), and
the measured quality was worse even with the block's final maximum known in
advance (docs/kernels.md). The scales sit beside the values with the same
leading axes, so a kernel program reads a block's K (or V) tile and its
`[block_size]` scales in the same step, and folds them into the score
columns (K) or the probabilities (V) instead of rescaling every element.

`quantize` is plain jnp on the last axis, written only with operations the
Pallas Triton lowering has (no `round`: half away from zero via a truncating
cast), so the reference write and the Triton write kernel share it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# name (engine/kv_layout.py KV-cache dtype) -> (storage dtype, largest magnitude used)
FORMATS = {
    "int8": (jnp.dtype(jnp.int8), 127.0),
    "float8_e4m3": (jnp.dtype(jnp.float8_e4m3fn), 448.0),
}
SCALE_DTYPE = jnp.dtype(jnp.float32)


class QuantizedKV(NamedTuple):
  """An 8-bit paged KV cache (see the module docstring); a pytree of two arrays."""
  values: jax.Array
  scales: jax.Array


def is_quantized(kv_cache) -> bool:
  return isinstance(kv_cache, QuantizedKV)


def values_of(kv_cache) -> jax.Array:
  """The array holding K/V (the cache itself, or a quantized cache's values)."""
  return kv_cache.values if is_quantized(kv_cache) else kv_cache


def storage_dtype(name: str) -> jnp.dtype:
  """The array dtype of a KV-cache dtype name ('int8' -> int8, 'bfloat16' -> bfloat16)."""
  return FORMATS[name][0] if name in FORMATS else jnp.dtype(name)


def _qmax(dtype) -> float:
  for stored, qmax in FORMATS.values():
    if stored == jnp.dtype(dtype):
      return qmax
  raise ValueError(f"{dtype} is not an 8-bit KV-cache dtype; expected one of "
                   f"{[str(d) for d, _ in FORMATS.values()]}")


def quantize(x: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """x [..., d] -> (values [..., d] of `dtype`, float32 scales [...]).

  NOTE: an all-zero vector gets scale 0 and zero values (no division by 0).
  """
  qmax = _qmax(dtype)
  x = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x), axis=-1)
  inv = jnp.where(amax > 0, qmax / jnp.where(amax > 0, amax, 1.0), 0.0)
  y = jnp.clip(x * inv[..., None], -qmax, qmax)
  if jnp.issubdtype(dtype, jnp.integer):
    y = jnp.where(y >= 0, y + 0.5, y - 0.5)   # NOTE: the cast truncates: half away from 0
  return y.astype(dtype), amax * (1.0 / qmax)


def dequantize(values: jax.Array, scales: jax.Array) -> jax.Array:
  """values [..., d] * scales [...] in float32."""
  return values.astype(jnp.float32) * scales[..., None]


def empty(shape: tuple[int, ...], name: str, device=None):
  """A zeroed cache of `shape` ([num_blocks, kv_heads, 2, block_size, head_dim]) for a
  KV-cache dtype name: an array, or a `QuantizedKV` for an 8-bit name."""
  if name not in FORMATS:
    return jnp.zeros(shape, storage_dtype(name), device=device)
  return QuantizedKV(jnp.zeros(shape, storage_dtype(name), device=device),
                     jnp.zeros(shape[:-1], SCALE_DTYPE, device=device))
