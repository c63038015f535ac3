"""Prefix cache: full KV blocks keyed by a hash chain over their token ids.

A block's hash is H(parent_hash, token ids of the block, cache_salt), so a hash
identifies the whole prefix up to and including that block, and requests with
different salts (tenants) never map to the same block. The hash is sha256 over
a canonical byte encoding: stable across processes, unlike Python's `hash()`.

The cache only maps hashes to block ids; reference counts and the free queue
live in `engine.block_pool.BlockPool`, which calls `evict` when it reuses a
block.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Sequence

import numpy as np

BlockHash = bytes  # a 32-byte sha256 digest

_DOMAIN = b"pagedjax.prefix-block.v1"
_NO_PARENT = b"\x00" * 32


def hash_block(parent_hash: BlockHash | None, token_ids: Sequence[int],
               cache_salt: str | None) -> BlockHash:
  """Returns the chained hash of one full block.

  NOTE: the encoding is unambiguous: fixed-width parent, a flag + length-
  prefixed salt (None and "" differ), then the tokens as little-endian int64.
  """
  if parent_hash is not None and len(parent_hash) != 32:
    raise ValueError(f"parent_hash must be 32 bytes, got {len(parent_hash)}")
  h = hashlib.sha256(_DOMAIN)
  h.update(b"\x01" + parent_hash if parent_hash is not None else b"\x00" + _NO_PARENT)
  if cache_salt is None:
    h.update(b"\x00")
  else:
    salt = cache_salt.encode("utf-8")
    h.update(b"\x01" + struct.pack("<Q", len(salt)) + salt)
  tokens = np.asarray(token_ids, dtype=np.int64)  # [block_size]
  h.update(struct.pack("<Q", tokens.size) + tokens.astype("<i8").tobytes())
  return h.digest()


@dataclasses.dataclass(frozen=True)
class CachedBlock:
  """What the cache remembers about one registered block."""
  block_hash: BlockHash
  parent_hash: BlockHash | None
  token_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class PrefixCacheStats:
  """Token counters for metrics: how much of the queried prompts was served."""
  num_query_tokens: int = 0
  num_hit_tokens: int = 0

  @property
  def hit_rate(self) -> float:
    return self.num_hit_tokens / self.num_query_tokens if self.num_query_tokens else 0.0


class PrefixCache:
  """Maps chained block hashes to block ids (full blocks only)."""

  def __init__(self, block_size: int):
    if block_size < 1:
      raise ValueError(f"block_size must be >= 1, got {block_size}")
    self.block_size = block_size
    self._hash_to_block: dict[BlockHash, int] = {}
    self._block_to_entry: dict[int, CachedBlock] = {}
    self._num_query_tokens = 0
    self._num_hit_tokens = 0

  @property
  def num_cached_blocks(self) -> int:
    return len(self._block_to_entry)

  @property
  def stats(self) -> PrefixCacheStats:
    return PrefixCacheStats(self._num_query_tokens, self._num_hit_tokens)

  def block_hash(self, block_id: int) -> BlockHash | None:
    entry = self._block_to_entry.get(block_id)
    return entry.block_hash if entry is not None else None

  def entry(self, block_id: int) -> CachedBlock | None:
    return self._block_to_entry.get(block_id)

  def is_cached(self, block_id: int) -> bool:
    return block_id in self._block_to_entry

  def lookup(self, token_ids: Sequence[int], cache_salt: str | None = None,
             max_blocks: int | None = None, record_stats: bool = True) -> list[int]:
    """Returns the block ids of the longest cached run of full blocks that is a
    prefix of `token_ids` (at most `max_blocks` of them).

    NOTE: each hit also compares the stored tokens and parent hash, so even a
    hash collision can never serve a block holding other tokens.
    """
    bs = self.block_size
    limit = len(token_ids) // bs
    if max_blocks is not None:
      limit = min(limit, max(0, max_blocks))
    hits: list[int] = []
    parent: BlockHash | None = None
    for i in range(limit):
      block_tokens = tuple(token_ids[i * bs:(i + 1) * bs])
      h = hash_block(parent, block_tokens, cache_salt)
      block_id = self._hash_to_block.get(h)
      if block_id is None:
        break
      entry = self._block_to_entry[block_id]
      if entry.token_ids != block_tokens or entry.parent_hash != parent:
        break
      hits.append(block_id)
      parent = h
    if record_stats:
      self._num_query_tokens += len(token_ids)
      self._num_hit_tokens += len(hits) * bs
    return hits

  def insert(self, block_id: int, block_hash: BlockHash, parent_hash: BlockHash | None,
             token_ids: Sequence[int]) -> bool:
    """Registers a full block; returns False if an equal block is already cached.

    NOTE: when two requests computed the same block independently, the first
    registered block id stays the canonical one; the other stays unhashed.
    """
    token_ids = tuple(int(t) for t in token_ids)
    if block_id < 1:
      raise ValueError(f"block {block_id} cannot be cached (0 is the null block)")
    if len(token_ids) != self.block_size:
      raise ValueError(f"only full blocks are cached: got {len(token_ids)} tokens, "
                       f"block_size is {self.block_size}")
    existing = self._block_to_entry.get(block_id)
    if existing is not None:
      if existing.block_hash == block_hash:
        return True
      raise ValueError(f"block {block_id} is already cached under another hash")
    if block_hash in self._hash_to_block:
      return False
    self._hash_to_block[block_hash] = block_id
    self._block_to_entry[block_id] = CachedBlock(block_hash, parent_hash, token_ids)
    return True

  def evict(self, block_id: int) -> bool:
    """Forgets a block (its memory is about to be reused); False if unknown."""
    entry = self._block_to_entry.pop(block_id, None)
    if entry is None:
      return False
    del self._hash_to_block[entry.block_hash]
    return True

  def clear(self) -> None:
    self._hash_to_block.clear()
    self._block_to_entry.clear()
