"""Splitting a packed prefill batch into per-sequence query tiles.

Each tile holds up to `block_q` consecutive tokens of ONE sequence, so a
kernel program never straddles two sequences. With T packed tokens and S
sequences at most cdiv(T, block_q) + S tiles are needed (each sequence wastes
at most one partial tile); that static count is the kernel's grid size and
unused tiles have zero rows. With `align` > 1 a sequence's tiles are the
windows [w, w + block_q) of packed rows with w = align * k + j * block_q
(k the largest with align * k <= the sequence's first row): a kernel that can
only start a copy at a multiple of `align` reads a tile's rows as one box.
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
  window: jax.Array  # first packed row of the tile's window (<= start)


def num_tiles(num_tokens: int, num_seqs: int, block_q: int,
              align: int = 1) -> int:
  """Static upper bound on the tiles of any packing."""
  return -(-(num_tokens + (align - 1) * num_seqs) // block_q) + num_seqs


def _tile_counts(cu_q_lens: jax.Array, block_q: int, align: int):
  """(q_lens, window origins, tiles per sequence, inclusive cumsum of tiles),
  each [num_seqs]."""
  q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
  origin = cu_q_lens[:-1] // align * align
  lead = cu_q_lens[:-1] - origin
  tiles_per_seq = jnp.where(q_lens > 0,
                            (q_lens + lead + block_q - 1) // block_q, 0)
  return q_lens, origin, tiles_per_seq, jnp.cumsum(tiles_per_seq)


def make_tiles(cu_q_lens: jax.Array, kv_lens: jax.Array, num_tokens: int,
               block_q: int, align: int = 1) -> Tiles:
  """Computes tile metadata from cumulative query lengths (jit-friendly)."""
  num_seqs = kv_lens.shape[0]
  q_lens, origin, tiles_per_seq, cu_tiles = _tile_counts(cu_q_lens, block_q,
                                                         align)
  t = jnp.arange(num_tiles(num_tokens, num_seqs, block_q, align),
                 dtype=jnp.int32)
  seq = jnp.searchsorted(cu_tiles, t, side="right").astype(jnp.int32)
  used = seq < num_seqs
  seq = jnp.minimum(seq, num_seqs - 1)
  local = t - (cu_tiles[seq] - tiles_per_seq[seq])  # tile index in its seq
  window = origin[seq] + local * block_q
  start = jnp.maximum(window, cu_q_lens[seq])
  stop = jnp.minimum(window + block_q, cu_q_lens[seq + 1])
  rows = jnp.where(used, jnp.clip(stop - start, 0, block_q), 0)
  start = jnp.where(used, start, 0)
  first_pos = kv_lens[seq] - q_lens[seq] + start - cu_q_lens[seq]
  i32 = lambda x: x.astype(jnp.int32)
  return Tiles(seq, i32(start), i32(rows), i32(first_pos), kv_lens[seq],
               i32(jnp.where(used, window, 0)))


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


class QBoxes(NamedTuple):
  """Where a kernel reads each tile's block_q query rows, each int32 [tiles].

  Direct (q itself, [T, hkv, group, d]): rows q_row = min(window, T - block_q)
  of q, so a box never leaves q; the box then starts `shift` tokens before the
  tile's first, and those rows are recomputed, not kept. Gathered
  (gather_slots): rows tile * block_q.., shift 0.
  """
  q_row: jax.Array  # first row of the box in the kernel's Q array
  shift: jax.Array  # tile.start - the box's first token


def q_boxes(tiles: Tiles, num_tokens: int, block_q: int, direct: bool) -> QBoxes:
  """QBoxes of direct reads (needs num_tokens >= block_q) or of tile slots."""
  if direct:
    first = jnp.minimum(tiles.window, num_tokens - block_q)
    shift = jnp.where(tiles.rows > 0, tiles.start - first, 0)
    return QBoxes(first.astype(jnp.int32), shift.astype(jnp.int32))
  t = jnp.arange(tiles.start.shape[0], dtype=jnp.int32)
  return QBoxes(t * block_q, jnp.zeros_like(t))


def token_slots(cu_q_lens: jax.Array, num_tokens: int, block_q: int,
                tiles: Tiles, shift: jax.Array, align: int = 1):
  """(slot, valid) per packed token, each [num_tokens], for tiles made with
  `align`: slot tile * block_q + r holds box row r, the tile's first token
  being row `shift`. Padding tokens are not valid (slot 0).
  """
  num_seqs = cu_q_lens.shape[0] - 1
  _, origin, tiles_per_seq, cu_tiles = _tile_counts(cu_q_lens, block_q, align)
  k = jnp.arange(num_tokens, dtype=jnp.int32)
  seq = jnp.searchsorted(cu_q_lens[1:], k, side="right").astype(jnp.int32)
  valid = seq < num_seqs
  seq = jnp.minimum(seq, num_seqs - 1)
  tile = cu_tiles[seq] - tiles_per_seq[seq] + (k - origin[seq]) // block_q
  tile = jnp.clip(tile, 0, tiles.start.shape[0] - 1)
  slot = tile * block_q + k - tiles.start[tile] + shift[tile]
  return jnp.where(valid, slot, 0).astype(jnp.int32), valid


def gather_slots(q: jax.Array, tiles: Tiles, num_kv_heads: int,
                 group_pad: int, block_q: int) -> jax.Array:
  """[T, hq, d] -> [num_tiles * block_q, hkv, group_pad, d] tile slots.

  Slot tile * block_q + i holds the tile's token i (zeros past `rows`); heads
  past the group are zeros. A kernel reads one head's tokens of a tile as a
  strided box, with no per-tile transpose in memory.
  """
  num_tokens, hq, d = q.shape
  group = hq // num_kv_heads
  qg = q.reshape(num_tokens, num_kv_heads, group, d)
  qg = jnp.pad(qg, ((0, 0), (0, 0), (0, group_pad - group), (0, 0)))
  qt = gather_tiles(qg, tiles, block_q)  # [tiles, bq, hkv, gp, d]
  return qt.reshape((-1,) + qt.shape[2:])


def scatter_slots(out: jax.Array, cu_q_lens: jax.Array, num_tokens: int,
                  group: int, tiles: Tiles, shift: jax.Array,
                  align: int = 1) -> jax.Array:
  """Inverse of gather_slots: [slots, hkv, gp, d] -> [T, hq, d].

  A gather of each token's slot (no scatter); arguments as token_slots.
  Padding tokens are zeros.
  """
  _, hkv, _, d = out.shape
  block_q = out.shape[0] // tiles.start.shape[0]
  slot, valid = token_slots(cu_q_lens, num_tokens, block_q, tiles, shift,
                            align)
  y = out[slot, :, :group, :]  # [T, hkv, group, d]
  y = jnp.where(valid[:, None, None, None], y, jnp.zeros_like(y))
  return y.reshape(num_tokens, hkv * group, d)


def fold_queries(q: jax.Array, tiles: Tiles, num_kv_heads: int, group_pad: int,
                 block_q: int) -> jax.Array:
  """[T, hq, d] -> [num_tiles, hkv, block_q * group_pad, d] tile rows.

  Row r of a tile is token r // group_pad and query head r % group_pad of the
  KV head's group; heads past the group and tokens past `rows` are zeros.
  """
  d = q.shape[-1]
  qt = gather_slots(q, tiles, num_kv_heads, group_pad, block_q).reshape(
      -1, block_q, num_kv_heads, group_pad, d)  # [tiles, bq, hkv, gp, d]
  return qt.transpose(0, 2, 1, 3, 4).reshape(
      qt.shape[0], num_kv_heads, block_q * group_pad, d)


def unfold_outputs(out: jax.Array, tiles: Tiles, num_tokens: int, group: int,
                   group_pad: int) -> jax.Array:
  """Inverse of fold_queries: [tiles, hkv, rows, d] -> [T, hkv * group, d].

  Padding tokens (covered by no tile) are zeros.
  """
  n_tiles, hkv, num_rows, d = out.shape
  out = out.reshape(n_tiles, hkv, num_rows // group_pad, group_pad, d)
  out = out.transpose(0, 2, 1, 3, 4)  # [tiles, bq, hkv, gp, d]
  out = scatter_tiles(out, tiles, num_tokens)  # [T, hkv, gp, d]
  return out[:, :, :group, :].reshape(num_tokens, hkv * group, d)
