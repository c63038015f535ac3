"""Block pool: reference counts and the LRU free queue of fixed-size KV blocks.

Blocks are ids into one preallocated device cache of `num_blocks` blocks.
Block 0 is the null block: padded rows write their K/V there, so it is never
allocated, freed or hashed. A block with refcount 0 sits in the free queue but
keeps its contents and hash (if any) until it is popped again, so a later
request can still hit it in the prefix cache.
"""
from __future__ import annotations

import collections
from typing import Iterable

from engine.prefix_cache import PrefixCache

NULL_BLOCK_ID = 0


class NoFreeBlocksError(RuntimeError):
  """Raised when an allocation asks for more blocks than are free."""


class BlockPool:
  """Owns block ids 1..num_blocks-1, their refcounts and the free queue.

  NOTE: the free queue is an OrderedDict used as a doubly linked list: pop
  from the head (least recently freed first), append at the tail, and O(1)
  removal from the middle when a prefix hit revives a freed cached block.
  """

  def __init__(self, num_blocks: int, prefix_cache: PrefixCache | None = None):
    if num_blocks < 2:
      raise ValueError(f"num_blocks must be >= 2 (block 0 is the null block), got {num_blocks}")
    self._num_blocks = num_blocks
    self.prefix_cache = prefix_cache
    self._ref_counts = [0] * num_blocks
    self._free: collections.OrderedDict[int, None] = collections.OrderedDict(
        (b, None) for b in range(1, num_blocks))

  @property
  def num_blocks(self) -> int:
    """All blocks, including the null block (the device cache's first dim)."""
    return self._num_blocks

  @property
  def num_usable_blocks(self) -> int:
    return self._num_blocks - 1

  @property
  def num_free_blocks(self) -> int:
    """Blocks with refcount 0, including cached ones that may be evicted."""
    return len(self._free)

  @property
  def num_used_blocks(self) -> int:
    return self.num_usable_blocks - len(self._free)

  @property
  def usage(self) -> float:
    return self.num_used_blocks / self.num_usable_blocks

  def ref_count(self, block_id: int) -> int:
    self._check_id(block_id)
    return self._ref_counts[block_id]

  def is_free(self, block_id: int) -> bool:
    return block_id in self._free

  def free_block_ids(self) -> list[int]:
    """The free queue, head (next to be allocated) first."""
    return list(self._free)

  def allocate(self, n: int) -> list[int]:
    """Pops n blocks from the head of the free queue, evicting their hashes."""
    if n < 0:
      raise ValueError(f"cannot allocate {n} blocks")
    if n > len(self._free):
      raise NoFreeBlocksError(f"asked for {n} blocks, {len(self._free)} free")
    out = []
    for _ in range(n):
      block_id, _ = self._free.popitem(last=False)
      if self.prefix_cache is not None:
        self.prefix_cache.evict(block_id)
      self._ref_counts[block_id] = 1
      out.append(block_id)
    return out

  def acquire(self, block_ids: Iterable[int]) -> None:
    """Adds a reference to each block (a prefix hit); revives freed ones."""
    block_ids = list(block_ids)
    for block_id in block_ids:
      self._check_id(block_id)
    for block_id in block_ids:
      if self._ref_counts[block_id] == 0:
        del self._free[block_id]
      self._ref_counts[block_id] += 1

  def release(self, block_ids: Iterable[int]) -> None:
    """Drops a reference from each block; blocks reaching 0 join the tail.

    NOTE: callers pass a request's blocks in reverse order, so its tail blocks
    (the least shareable ones) are evicted before its head blocks.
    """
    block_ids = list(block_ids)
    pending = collections.Counter(block_ids)
    for block_id, count in pending.items():
      self._check_id(block_id)
      if self._ref_counts[block_id] < count:
        raise ValueError(f"block {block_id} released {count}x with refcount "
                         f"{self._ref_counts[block_id]}")
    for block_id in block_ids:
      self._ref_counts[block_id] -= 1
      if self._ref_counts[block_id] == 0:
        self._free[block_id] = None

  def _check_id(self, block_id: int) -> None:
    if not 1 <= block_id < self._num_blocks:
      raise ValueError(f"invalid block id {block_id} (null block is 0, pool has "
                       f"{self._num_blocks} blocks)")
