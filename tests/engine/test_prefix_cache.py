"""Prefix cache: stable chained hashes, full blocks only, verified lookups."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.prefix_cache import PrefixCache, hash_block


def _insert_chain(cache: PrefixCache, tokens: list[int], block_ids: list[int],
                  salt: str | None = None) -> list[bytes]:
  bs = cache.block_size
  parent, hashes = None, []
  for i, block_id in enumerate(block_ids):
    block_tokens = tokens[i * bs:(i + 1) * bs]
    h = hash_block(parent, block_tokens, salt)
    assert cache.insert(block_id, h, parent, block_tokens)
    hashes.append(h)
    parent = h
  return hashes


def test_hash_is_stable_across_processes():
  """sha256 over a canonical encoding, not Python's randomized hash()."""
  code = ("from engine.prefix_cache import hash_block;"
          "print(hash_block(hash_block(None, [1, 2, 3], 'a'), [4, 5, 6], 'a').hex())")
  outs = set()
  for seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    outs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                            capture_output=True, text=True).stdout.strip())
  assert outs == {hash_block(hash_block(None, [1, 2, 3], "a"), [4, 5, 6], "a").hex()}


def test_hash_chains_parent_tokens_and_salt():
  a = hash_block(None, [1, 2], None)
  b = hash_block(None, [3, 4], None)
  assert len(a) == 32 and a == hash_block(None, (1, 2), None)
  # Same block tokens under different parents hash differently.
  assert hash_block(a, [5, 6], None) != hash_block(b, [5, 6], None)
  assert hash_block(a, [5, 6], None) != hash_block(None, [5, 6], None)
  # None, "" and a real salt are three namespaces.
  salted = {hash_block(None, [1, 2], s) for s in (None, "", "alice", "bob")}
  assert len(salted) == 4
  # Token order and token boundaries matter.
  assert hash_block(None, [2, 1], None) != a
  assert hash_block(None, [1, 2, 0], None) != a
  with pytest.raises(ValueError):
    hash_block(b"short", [1], None)


def test_lookup_returns_longest_cached_prefix_of_full_blocks():
  cache = PrefixCache(block_size=4)
  tokens = list(range(100, 112))                # 3 full blocks
  _insert_chain(cache, tokens, [7, 3, 9])
  assert cache.num_cached_blocks == 3
  assert cache.lookup(tokens) == [7, 3, 9]
  assert cache.lookup(tokens + [1, 2]) == [7, 3, 9]      # trailing partial block ignored
  assert cache.lookup(tokens[:11]) == [7, 3]             # last block not full
  assert cache.lookup(tokens[:4] + [0] + tokens[5:]) == [7]  # diverges in block 2
  assert cache.lookup([0] + tokens[1:]) == []
  assert cache.lookup(tokens, max_blocks=2) == [7, 3]
  assert cache.lookup(tokens, max_blocks=0) == []
  assert cache.lookup(tokens, cache_salt="x") == []


def test_lookup_checks_stored_tokens_against_collisions():
  """A block stored under a hash that (by collision) names other tokens is never served."""
  cache = PrefixCache(block_size=2)
  wanted = [1, 2]
  colliding_hash = hash_block(None, wanted, None)
  assert cache.insert(5, colliding_hash, None, [8, 9])   # wrong tokens under that hash
  assert cache.lookup(wanted) == []
  # Right tokens but a parent from another chain is rejected too.
  cache2 = PrefixCache(block_size=2)
  first = hash_block(None, [1, 2], None)
  cache2.insert(4, first, None, [1, 2])
  fake_parent = hash_block(None, [7, 7], None)
  cache2.insert(6, hash_block(first, [3, 4], None), fake_parent, [3, 4])
  assert cache2.lookup([1, 2, 3, 4]) == [4]


def test_insert_only_full_blocks_and_first_writer_wins():
  cache = PrefixCache(block_size=4)
  h = hash_block(None, [1, 2, 3, 4], None)
  with pytest.raises(ValueError, match="full blocks"):
    cache.insert(2, hash_block(None, [1, 2, 3], None), None, [1, 2, 3])
  with pytest.raises(ValueError, match="null block"):
    cache.insert(0, h, None, [1, 2, 3, 4])
  assert cache.insert(2, h, None, [1, 2, 3, 4])
  assert cache.insert(2, h, None, [1, 2, 3, 4])            # idempotent
  assert not cache.insert(5, h, None, [1, 2, 3, 4])        # duplicate content
  assert cache.lookup([1, 2, 3, 4]) == [2]
  assert not cache.is_cached(5)
  with pytest.raises(ValueError, match="another hash"):
    cache.insert(2, hash_block(None, [4, 3, 2, 1], None), None, [4, 3, 2, 1])


def test_evict_forgets_block_and_breaks_chain_after_it():
  cache = PrefixCache(block_size=2)
  tokens = [1, 2, 3, 4, 5, 6]
  hashes = _insert_chain(cache, tokens, [1, 2, 3])
  assert cache.block_hash(2) == hashes[1]
  assert cache.evict(2)
  assert not cache.evict(2)
  assert cache.block_hash(2) is None
  assert cache.num_cached_blocks == 2
  assert cache.lookup(tokens) == [1]


def test_hit_counters():
  cache = PrefixCache(block_size=2)
  _insert_chain(cache, [1, 2, 3, 4], [1, 2])
  cache.lookup([1, 2, 3, 4, 5])
  cache.lookup([9, 9, 9])
  cache.lookup([1, 2], record_stats=False)
  stats = cache.stats
  assert (stats.num_query_tokens, stats.num_hit_tokens) == (8, 4)
  assert stats.hit_rate == pytest.approx(0.5)
