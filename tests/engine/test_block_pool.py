"""Block pool: refcounts, LRU free queue, null block, atomic failures."""
from __future__ import annotations

import pytest

from engine.block_pool import BlockPool, NoFreeBlocksError
from engine.prefix_cache import PrefixCache, hash_block


def test_initial_state_excludes_null_block():
  pool = BlockPool(6)
  assert pool.num_blocks == 6
  assert pool.free_block_ids() == [1, 2, 3, 4, 5]
  assert (pool.num_free_blocks, pool.num_used_blocks, pool.usage) == (5, 0, 0.0)
  assert sorted(pool.allocate(5)) == [1, 2, 3, 4, 5]
  assert pool.usage == 1.0
  with pytest.raises(ValueError):
    BlockPool(1)


def test_allocate_pops_lru_head_and_release_appends_tail():
  pool = BlockPool(8)
  a = pool.allocate(3)
  assert a == [1, 2, 3]
  assert [pool.ref_count(b) for b in a] == [1, 1, 1]
  pool.release(reversed(a))
  assert pool.free_block_ids() == [4, 5, 6, 7, 3, 2, 1]
  assert pool.allocate(5) == [4, 5, 6, 7, 3]
  assert pool.num_used_blocks == 5


def test_allocation_failure_changes_nothing():
  pool = BlockPool(4)
  held = pool.allocate(2)
  before = (pool.free_block_ids(), [pool.ref_count(b) for b in (1, 2, 3)])
  with pytest.raises(NoFreeBlocksError):
    pool.allocate(2)
  assert isinstance(NoFreeBlocksError("x"), RuntimeError)
  assert (pool.free_block_ids(), [pool.ref_count(b) for b in (1, 2, 3)]) == before
  assert held == [1, 2]
  with pytest.raises(ValueError):
    pool.allocate(-1)


def test_acquire_revives_freed_block_from_middle_of_queue():
  pool = BlockPool(6)
  blocks = pool.allocate(5)
  pool.release(blocks)                       # queue [1, 2, 3, 4, 5]
  pool.acquire([3])
  assert pool.ref_count(3) == 1
  assert pool.free_block_ids() == [1, 2, 4, 5]
  pool.acquire([3])
  assert pool.ref_count(3) == 2
  pool.release([3])
  assert pool.free_block_ids() == [1, 2, 4, 5]   # still referenced once
  pool.release([3])
  assert pool.free_block_ids() == [1, 2, 4, 5, 3]


def test_freed_block_keeps_hash_until_reallocated():
  cache = PrefixCache(block_size=2)
  pool = BlockPool(4, cache)
  (b1, b2) = pool.allocate(2)
  h = hash_block(None, [1, 2], None)
  cache.insert(b1, h, None, [1, 2])
  pool.release([b2, b1])                     # queue [3, 2, 1]
  assert cache.lookup([1, 2]) == [b1]
  assert pool.allocate(2) == [3, 2]
  assert cache.is_cached(b1)
  assert pool.allocate(1) == [b1]            # popped: evicted from the cache
  assert not cache.is_cached(b1)
  assert cache.lookup([1, 2]) == []


def test_invalid_ids_and_over_release_raise_without_change():
  pool = BlockPool(4)
  pool.allocate(1)
  for bad in (0, 4, -1):
    with pytest.raises(ValueError):
      pool.acquire([bad])
    with pytest.raises(ValueError):
      pool.release([bad])
  with pytest.raises(ValueError):
    pool.release([1, 1])                     # refcount is only 1
  assert pool.ref_count(1) == 1
  with pytest.raises(ValueError):
    pool.release([2])                        # never allocated
  assert pool.free_block_ids() == [2, 3]
