"""8-bit KV caches: the (values, scales) pytree and the one quantization rule.

A quantized cache is `QuantizedKV(values, scales)`:
  values [num_blocks, num_kv_heads, 2, block_size, head_dim]  int8, or uint8
                                                              holding float8_e4m3fn bits
  scales [num_blocks, num_kv_heads, 2, block_size]            float32
one scale per (token slot, KV head, K|V): the vector's absolute maximum over
head_dim divided by the format's largest value (int8), or for e4m3 the best of
E4M3_SHIFTS grid shifts above that (`quantize`), so `number * scale` is the
stored vector. Per token rather than per block: measured on SmolLM2 (docs/kernels.md)
per-token scales kept int8's KL to the bf16 cache at a third of a per-block scale's, even
one that knew each block's final maximum in advance, and a block filled token by token
cannot know it (a scale fixed by the step that opens the block cost 45x the KL). The
scales cost 4 bytes per vector, 3 % of a head_dim-128 cache. They sit beside the values
with the same leading axes, so a kernel program reads a block's K (or V) tile and its
`[block_size]` scales in the same step, and folds them into the score columns (K) or the
probabilities (V) instead of rescaling every element.

NOTE: e4m3 values are stored as their uint8 bit patterns and reinterpreted
(`numbers`) where they are read. XLA:CPU has no native float8 scatter: a
4-token write into a float8 cache of SmolLM2's 1920 blocks copied the whole
array through a wider type (69 ms, vs 0.1 ms for a uint8 or int8 cache), and
a bitcast of the whole array is a copy there too (7 ms); a bitcast of the
written vectors or of a gathered tile costs nothing.

`quantize` is plain jnp on the last axis, written only with operations the
Pallas Triton lowering has (no `round`: half away from zero via a truncating
cast), so the reference write and the Triton write kernel share it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Format(NamedTuple):
  """An 8-bit KV format: the array dtype, the number type it holds, the largest magnitude."""
  storage: jnp.dtype
  number: jnp.dtype
  qmax: float


# name (an engine/kv_layout.py KV-cache dtype) -> its format
FORMATS = {
    "int8": Format(jnp.dtype(jnp.int8), jnp.dtype(jnp.int8), 127.0),
    "float8_e4m3": Format(jnp.dtype(jnp.uint8), jnp.dtype(jnp.float8_e4m3fn), 448.0),
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
  """The array dtype of a KV-cache dtype name ('int8' -> int8, 'float8_e4m3' -> uint8,
  'bfloat16' -> bfloat16)."""
  return FORMATS[name].storage if name in FORMATS else jnp.dtype(name)


def name_of(kv_cache) -> str:
  """The KV-cache dtype name of a cache ('int8', 'float8_e4m3', 'bfloat16', ...)."""
  if not is_quantized(kv_cache):
    return jnp.dtype(kv_cache.dtype).name
  storage = jnp.dtype(kv_cache.values.dtype)
  return next(name for name, fmt in FORMATS.items() if fmt.storage == storage)


def format_of(storage) -> Format:
  """The 8-bit format stored in arrays of dtype `storage` (int8 or uint8)."""
  for fmt in FORMATS.values():
    if fmt.storage == jnp.dtype(storage):
      return fmt
  raise ValueError(f"{storage} holds no 8-bit KV format; expected one of "
                   f"{[str(f.storage) for f in FORMATS.values()]}")


def numbers(values: jax.Array) -> jax.Array:
  """Stored values as the numbers they hold (int8 as is; uint8 bits as float8_e4m3fn)."""
  fmt = format_of(values.dtype)
  if fmt.number == fmt.storage:
    return values
  return jax.lax.bitcast_convert_type(values, fmt.number)


# NOTE: e4m3's scale is the best of E4M3_SHIFTS grid shifts over one octave (the vector's
# maximum at 448 / 2^(k / E4M3_SHIFTS)): float steps are relative, so which values land
# near a step depends on where the scale puts them. On SmolLM2 (docs/kernels.md) 16
# shifts took the mean KL to the bf16 cache from 0.0047 to 0.0031 nats (8: 0.0034).
E4M3_SHIFTS = 16


def quantize(x: jax.Array, storage) -> tuple[jax.Array, jax.Array]:
  """x [..., d] -> (values [..., d] of dtype `storage`, float32 scales [...]).

  int8: scale = max |x| / 127, rounded half away from zero. e4m3: of the scales
  max |x| * 2^(k / E4M3_SHIFTS) / 448 (k = 0 .. E4M3_SHIFTS - 1; none clips), the one
  whose stored vector is nearest x (squared error; the first of equals).
  NOTE: an all-zero vector gets scale 0 and zero values (no division by 0).
  """
  fmt = format_of(storage)
  x = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x), axis=-1)
  shifts = 1 if jnp.issubdtype(fmt.number, jnp.integer) else E4M3_SHIFTS
  for k in range(shifts):
    c = 2.0 ** (k / shifts)
    y_k = _stored(x, jnp.where(amax > 0, (fmt.qmax / c) / jnp.where(amax > 0, amax, 1.0),
                               0.0), fmt)
    scale_k = amax * (c / fmt.qmax)
    err_k = jnp.sum(jnp.square(y_k * scale_k[..., None] - x), axis=-1)
    if k == 0:
      y, scale, err = y_k, scale_k, err_k
      continue
    take = err_k < err
    y, scale = jnp.where(take[..., None], y_k, y), jnp.where(take, scale_k, scale)
    err = jnp.where(take, err_k, err)
  y = y.astype(fmt.number)  # NOTE: exact: y holds the format's numbers in float32
  if fmt.number != fmt.storage:
    y = jax.lax.bitcast_convert_type(y, fmt.storage)
  return y, scale


def _stored(x, inv, fmt: Format):
  """x [..., d] times inv [...], clipped and rounded to the format's numbers (float32)."""
  y = jnp.clip(x * inv[..., None], -fmt.qmax, fmt.qmax)
  if jnp.issubdtype(fmt.number, jnp.integer):
    y = jnp.where(y >= 0, y + 0.5, y - 0.5)   # NOTE: the cast truncates: half away from 0
  return y.astype(fmt.number).astype(jnp.float32)


def quantize_two_terms(x: jax.Array, storage) -> tuple[jax.Array, jax.Array]:
  """x [..., d] -> (values [2, ..., d] of dtype `storage`, float32 scales [2, ...]):
  x's quantization and that of what it left over, so x ~ the two terms' sum.

  NOTE: the second term takes the first's error down by the format's precision again:
  about 2^-8 of each element for e4m3 (3 mantissa bits a term; bf16 keeps 2^-9),
  1/64516 of the vector's maximum for int8.
  """
  hi, hi_scales = quantize(x, storage)
  lo, lo_scales = quantize(x.astype(jnp.float32) - dequantize(hi, hi_scales), storage)
  return jnp.stack([hi, lo]), jnp.stack([hi_scales, lo_scales])


def dequantize(values: jax.Array, scales: jax.Array) -> jax.Array:
  """values [..., d] * scales [...] in float32."""
  return numbers(values).astype(jnp.float32) * scales[..., None]


def empty(shape: tuple[int, ...], name: str, device=None):
  """A zeroed cache of `shape` ([num_blocks, kv_heads, 2, block_size, head_dim]) for a
  KV-cache dtype name: an array, or a `QuantizedKV` for an 8-bit name."""
  if name not in FORMATS:
    return jnp.zeros(shape, storage_dtype(name), device=device)
  return QuantizedKV(jnp.zeros(shape, storage_dtype(name), device=device),
                     jnp.zeros(shape[:-1], SCALE_DTYPE, device=device))
