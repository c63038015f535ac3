"""Shape and dtype checks shared by the public kernel wrappers.

All checks run on static shapes at trace time and raise `ValueError` with a
message naming the offending argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FLOAT_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))
MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 256


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise ValueError(msg)


def check_int32(name: str, x: jax.Array, ndim: int) -> None:
  """Checks that `x` is an int32 array of rank `ndim`."""
  _require(x.ndim == ndim, f"{name} must have rank {ndim}, got shape {x.shape}")
  _require(
      jnp.dtype(x.dtype) == jnp.dtype(jnp.int32),
      f"{name} must be int32, got {x.dtype}",
  )


def check_kv_cache(kv_cache: jax.Array) -> tuple[int, int, int, int]:
  """Validates the cache layout; returns (num_blocks, kv_heads, bs, head_dim).

  Layout: [num_blocks, num_kv_heads, 2, block_size, head_dim].
  """
  _require(
      kv_cache.ndim == 5,
      "kv_cache must have shape [num_blocks, num_kv_heads, 2, block_size, "
      f"head_dim], got {kv_cache.shape}",
  )
  num_blocks, num_kv_heads, two, block_size, head_dim = kv_cache.shape
  _require(two == 2, f"kv_cache axis 2 must be 2 (K, V), got {two}")
  _require(
      jnp.dtype(kv_cache.dtype) in FLOAT_DTYPES,
      f"kv_cache dtype must be bfloat16 or float32, got {kv_cache.dtype}",
  )
  _require(
      MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE
      and block_size & (block_size - 1) == 0,
      f"block_size must be a power of two in [{MIN_BLOCK_SIZE}, "
      f"{MAX_BLOCK_SIZE}], got {block_size}",
  )
  _require(num_blocks >= 1, "kv_cache must have at least one block")
  _require(num_kv_heads >= 1, "kv_cache must have at least one KV head")
  return num_blocks, num_kv_heads, block_size, head_dim


def check_query(
    q: jax.Array, num_kv_heads: int, head_dim: int
) -> tuple[int, int]:
  """Validates q [n, num_q_heads, head_dim]; returns (n, num_q_heads)."""
  _require(
      q.ndim == 3,
      f"q must have shape [n, num_q_heads, head_dim], got {q.shape}"
  )
  n, num_q_heads, q_head_dim = q.shape
  _require(
      jnp.dtype(q.dtype) in FLOAT_DTYPES,
      f"q dtype must be bfloat16 or float32, got {q.dtype}",
  )
  _require(
      q_head_dim == head_dim,
      f"q head_dim {q_head_dim} != kv_cache head_dim {head_dim}",
  )
  _require(
      num_q_heads % num_kv_heads == 0,
      f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads "
      f"({num_kv_heads})",
  )
  return n, num_q_heads


def check_decode_args(q, kv_cache, block_tables, lengths) -> None:
  """Validates the arguments of paged decode attention."""
  _, num_kv_heads, _, head_dim = check_kv_cache(kv_cache)
  batch, _ = check_query(q, num_kv_heads, head_dim)
  check_int32("block_tables", block_tables, 2)
  check_int32("lengths", lengths, 1)
  _require(
      block_tables.shape[0] == batch,
      f"block_tables batch {block_tables.shape[0]} != q batch {batch}",
  )
  _require(block_tables.shape[1] >= 1, "block_tables needs >= 1 column")
  _require(
      lengths.shape[0] == batch,
      f"lengths batch {lengths.shape[0]} != q batch {batch}",
  )


def check_prefill_args(q, kv_cache, block_tables, cu_q_lens, kv_lens) -> None:
  """Validates the arguments of paged prefill attention."""
  _, num_kv_heads, _, head_dim = check_kv_cache(kv_cache)
  check_query(q, num_kv_heads, head_dim)
  check_int32("block_tables", block_tables, 2)
  check_int32("cu_q_lens", cu_q_lens, 1)
  check_int32("kv_lens", kv_lens, 1)
  num_seqs = block_tables.shape[0]
  _require(num_seqs >= 1, "block_tables needs >= 1 sequence row")
  _require(block_tables.shape[1] >= 1, "block_tables needs >= 1 column")
  _require(
      cu_q_lens.shape[0] == num_seqs + 1,
      f"cu_q_lens must have num_seqs + 1 = {num_seqs + 1} entries, got "
      f"{cu_q_lens.shape[0]}",
  )
  _require(
      kv_lens.shape[0] == num_seqs,
      f"kv_lens must have num_seqs = {num_seqs} entries, got "
      f"{kv_lens.shape[0]}",
  )


def check_write_args(kv_cache, k, v, slot_mapping) -> None:
  """Validates the arguments of the KV write."""
  _, num_kv_heads, _, head_dim = check_kv_cache(kv_cache)
  for name, x in (("k", k), ("v", v)):
    _require(
        x.ndim == 3 and x.shape[1:] == (num_kv_heads, head_dim),
        f"{name} must have shape [num_tokens, {num_kv_heads}, {head_dim}], got "
        f"{x.shape}",
    )
  _require(k.shape == v.shape, f"k {k.shape} and v {v.shape} differ in shape")
  check_int32("slot_mapping", slot_mapping, 1)
  _require(
      slot_mapping.shape[0] == k.shape[0],
      f"slot_mapping has {slot_mapping.shape[0]} entries for {k.shape[0]} "
      "tokens",
  )
