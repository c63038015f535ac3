"""Splitting a packed prefill batch into per-sequence query tiles.

Each tile holds up to `block_q` consecutive tokens of ONE sequence, so a
kernel program never straddles two sequences. With T packed tokens and S
sequences at most cdiv(T, block_q) + S tiles are needed (each sequence wastes
at most one partial tile); that static count is the kernel's grid size and
unused tiles have zero rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Tiles(NamedTuple):
  """Per-tile metadata, each int32 [num_tiles]."""
  seq: jax.Array  # sequence index (clamped to a valid row for unused tiles)
  start: jax.Array  # index of the tile's first token in the packed q
  rows: jax.Array  # valid tokens in the tile (0 for unused tiles)
  first_pos: jax.Array  # cache position of the tile's first token
  kv_len: jax.Array  # the sequence's kv_len


def num_tiles(num_tokens: int, num_seqs: int, block_q: int) -> int:
  """Static upper bound on the tiles of any packing."""
  return -(-num_tokens // block_q) + num_seqs


def make_tiles(cu_q_lens: jax.Array, kv_lens: jax.Array, num_tokens: int,
               block_q: int) -> Tiles:
  """Computes tile metadata from cumulative query lengths (jit-friendly)."""
  num_seqs = kv_lens.shape[0]
  q_lens = cu_q_lens[1:] - cu_q_lens[:-1]  # [num_seqs]
  tiles_per_seq = (q_lens + block_q - 1) // block_q
  cu_tiles = jnp.cumsum(tiles_per_seq)  # [num_seqs], inclusive
  t = jnp.arange(num_tiles(num_tokens, num_seqs, block_q), dtype=jnp.int32)
  seq = jnp.searchsorted(cu_tiles, t, side="right").astype(jnp.int32)
  used = seq < num_seqs
  seq = jnp.minimum(seq, num_seqs - 1)
  local = t - (cu_tiles[seq] - tiles_per_seq[seq])  # tile index in its seq
  offset = local * block_q
  rows = jnp.where(used, jnp.clip(q_lens[seq] - offset, 0, block_q), 0)
  start = jnp.where(used, cu_q_lens[seq] + offset, 0)
  first_pos = kv_lens[seq] - q_lens[seq] + offset
  return Tiles(seq, start.astype(jnp.int32), rows.astype(jnp.int32),
               first_pos.astype(jnp.int32), kv_lens[seq])


def gather_tiles(x: jax.Array, tiles: Tiles, block_q: int) -> jax.Array:
  """[num_tokens, ...] -> [num_tiles, block_q, ...]; rows past `rows` are 0."""
  idx = tiles.start[:, None] + jnp.arange(block_q)[None, :]  # [tiles, bq]
  valid = jnp.arange(block_q)[None, :] < tiles.rows[:, None]
  g = x[jnp.clip(idx, 0, x.shape[0] - 1)]
  mask = valid.reshape(valid.shape + (1,) * (x.ndim - 1))
  return jnp.where(mask, g, jnp.zeros_like(g))


def scatter_tiles(y: jax.Array, tiles: Tiles, num_tokens: int) -> jax.Array:
  """Inverse of gather_tiles: [num_tiles, block_q, ...] -> [num_tokens, ...].

  Tokens covered by no tile (padding) are zeros.
  """
  block_q = y.shape[1]
  idx = tiles.start[:, None] + jnp.arange(block_q)[None, :]
  valid = jnp.arange(block_q)[None, :] < tiles.rows[:, None]
  # NOTE: invalid rows go to an extra dump row at index num_tokens.
  idx = jnp.where(valid, idx, num_tokens).reshape(-1)
  out = jnp.zeros((num_tokens + 1,) + y.shape[2:], y.dtype)
  out = out.at[idx].set(y.reshape((-1,) + y.shape[2:]), mode="drop")
  return out[:num_tokens]
