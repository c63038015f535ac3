"""Paged KV cache manager with prefix caching: exact block ids."""
from __future__ import annotations

import random

import pytest

from engine.kv_cache_manager import KVCacheManager
from engine.prefix_cache import hash_block
from engine.request import Request
from engine.sampling_params import SamplingParams


def _req(rid: str, prompt: list[int], max_tokens: int = 8, salt: str | None = None) -> Request:
  return Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens), cache_salt=salt)


def _prefill(mgr: KVCacheManager, req: Request, hit: tuple[list[int], int] = ([], 0)) -> None:
  """Admits a request as the scheduler would: take the hit, compute the rest."""
  blocks, n = hit
  assert mgr.allocate_slots(req, req.num_tokens - n, blocks, n)
  req.num_computed_tokens = req.num_tokens
  mgr.cache_full_blocks(req)


def _decode(mgr: KVCacheManager, req: Request, token: int) -> None:
  """One decode step: the last sampled token's K/V is written, a new one sampled."""
  assert mgr.allocate_slots(req, 1)
  req.num_computed_tokens += 1
  req.output_token_ids.append(token)
  mgr.cache_full_blocks(req)


PROMPT = list(range(100, 110))   # 10 tokens: 2 full blocks of 4 + 2


def test_only_full_blocks_hashed_with_chain():
  mgr = KVCacheManager(num_blocks=16, block_size=4)
  a = _req("a", PROMPT)
  _prefill(mgr, a)
  assert mgr.block_table("a") == [1, 2, 3]
  cache = mgr.prefix_cache
  h0 = hash_block(None, PROMPT[:4], None)
  h1 = hash_block(h0, PROMPT[4:8], None)
  assert (cache.block_hash(1), cache.block_hash(2), cache.block_hash(3)) == (h0, h1, None)
  assert cache.num_cached_blocks == 2
  # Decode fills block 3 (tokens 8..11); hashing chains from block 2's hash.
  a.output_token_ids.append(500)           # sampled by the prefill step
  _decode(mgr, a, 501)                     # computes token 10 (=500)
  assert cache.block_hash(3) is None       # 11 tokens computed: block 3 not full
  _decode(mgr, a, 502)                     # computes token 11 (=501)
  assert mgr.block_table("a") == [1, 2, 3]
  assert cache.block_hash(3) == hash_block(h1, PROMPT[8:] + [500, 501], None)
  _decode(mgr, a, 503)                     # token 12 starts block 4
  assert mgr.block_table("a") == [1, 2, 3, 4]
  assert cache.num_cached_blocks == 3


def test_shared_prefix_same_blocks_refcount_two():
  mgr = KVCacheManager(num_blocks=16, block_size=4)
  _prefill(mgr, _req("a", PROMPT))
  b = _req("b", PROMPT[:8] + [7, 7, 7])
  hit = mgr.get_computed_blocks(b)
  assert hit == ([1, 2], 8)
  _prefill(mgr, b, hit)
  assert mgr.block_table("b") == [1, 2, 4]
  pool = mgr.block_pool
  assert [pool.ref_count(i) for i in (1, 2, 3, 4)] == [2, 2, 1, 1]
  assert mgr.num_used_blocks == 4
  # Waste accounting counts the shared blocks once.
  assert mgr.num_allocated_slots() == 16
  assert mgr.num_used_slots() == 8 + 2 + 3
  mgr.free(b)
  assert [pool.ref_count(i) for i in (1, 2, 3, 4)] == [1, 1, 1, 0]


def test_hit_never_covers_last_token():
  mgr = KVCacheManager(num_blocks=16, block_size=4)
  _prefill(mgr, _req("a", PROMPT))
  assert mgr.get_computed_blocks(_req("b", PROMPT[:8])) == ([1], 4)
  assert mgr.get_computed_blocks(_req("c", PROMPT[:9])) == ([1, 2], 8)
  assert mgr.get_computed_blocks(_req("d", PROMPT[:4])) == ([], 0)
  assert mgr.get_computed_blocks(_req("e", PROMPT[:1])) == ([], 0)
  # A preempted request recomputes prompt + outputs: the cap uses all tokens.
  p = _req("p", PROMPT[:6])
  p.output_token_ids = PROMPT[6:9]          # 9 tokens in all
  assert mgr.get_computed_blocks(p) == ([1, 2], 8)


def test_lru_eviction_tail_blocks_first():
  mgr = KVCacheManager(num_blocks=8, block_size=4)   # 7 usable blocks
  a = _req("a", PROMPT)
  _prefill(mgr, a)                                   # [1, 2, 3], 1 and 2 cached
  mgr.free(a)
  assert mgr.block_pool.free_block_ids() == [4, 5, 6, 7, 3, 2, 1]
  c = _req("c", list(range(20)), max_tokens=16)
  assert mgr.allocate_slots(c, 20)                   # 5 blocks
  assert mgr.block_table("c") == [4, 5, 6, 7, 3]
  assert mgr.get_computed_blocks(_req("x", PROMPT)) == ([1, 2], 8)
  assert mgr.allocate_slots(c, 21)                   # 6th block: evicts block 2
  assert mgr.block_table("c")[-1] == 2
  assert mgr.get_computed_blocks(_req("y", PROMPT)) == ([1], 4)
  assert mgr.prefix_cache.num_cached_blocks == 1


def test_hit_on_freed_cached_block_leaves_free_queue():
  mgr = KVCacheManager(num_blocks=8, block_size=4)
  a = _req("a", PROMPT)
  _prefill(mgr, a)
  mgr.free(a)
  assert mgr.num_free_blocks == 7
  b = _req("b", PROMPT)
  hit = mgr.get_computed_blocks(b)
  assert hit == ([1, 2], 8)
  assert mgr.allocate_slots(b, 2, *hit)
  assert mgr.block_table("b") == [1, 2, 4]
  assert mgr.block_pool.free_block_ids() == [5, 6, 7, 3]
  assert [mgr.block_pool.ref_count(i) for i in (1, 2, 4)] == [1, 1, 1]


def test_different_salts_never_share():
  mgr = KVCacheManager(num_blocks=16, block_size=4)
  _prefill(mgr, _req("a", PROMPT, salt="alice"))
  assert mgr.get_computed_blocks(_req("b", PROMPT, salt="bob")) == ([], 0)
  assert mgr.get_computed_blocks(_req("c", PROMPT)) == ([], 0)
  assert mgr.get_computed_blocks(_req("d", PROMPT, salt="alice")) == ([1, 2], 8)
  b = _req("b2", PROMPT, salt="bob")
  _prefill(mgr, b)
  assert mgr.block_table("b2") == [4, 5, 6]
  assert mgr.prefix_cache.num_cached_blocks == 4


def test_failed_allocation_changes_nothing():
  mgr = KVCacheManager(num_blocks=6, block_size=4)   # 5 usable
  a = _req("a", PROMPT)
  _prefill(mgr, a)                                   # [1, 2, 3]
  mgr.free(a)                                        # queue [4, 5, 3, 2, 1]
  filler = _req("f", [1, 2, 3, 4, 5])
  assert mgr.allocate_slots(filler, 5)               # takes 4, 5
  b = _req("b", PROMPT[:8] + list(range(12)))        # 20 tokens: 5 blocks
  hit = mgr.get_computed_blocks(b)
  assert hit == ([1, 2], 8)
  queue = mgr.block_pool.free_block_ids()
  refs = [mgr.block_pool.ref_count(i) for i in range(1, 6)]
  # 2 revived hit blocks + 3 new blocks > 3 free blocks.
  assert not mgr.allocate_slots(b, 12, *hit)
  assert mgr.block_pool.free_block_ids() == queue
  assert [mgr.block_pool.ref_count(i) for i in range(1, 6)] == refs
  assert mgr.block_table("b") == [] and not mgr.has_request("b")
  assert mgr.prefix_cache.num_cached_blocks == 2
  # Growth failure of a running request also leaves it untouched.
  assert not mgr.allocate_slots(filler, 21)          # 6 blocks: 4 more > 3 free
  assert mgr.block_table("f") == [4, 5]
  assert mgr.block_pool.free_block_ids() == queue
  # Exactly enough: the 2 revived hit blocks + 1 new one.
  assert mgr.allocate_slots(b, 4, *hit)
  assert mgr.block_table("b") == [1, 2, 3] and mgr.num_free_blocks == 0


def test_no_leaks_after_finish_and_abort():
  rng = random.Random(0)
  mgr = KVCacheManager(num_blocks=40, block_size=4)
  system = list(range(1000, 1012))
  live: list[Request] = []
  for step in range(60):
    if rng.random() < 0.5:
      r = _req(f"r{step}", system + [rng.randrange(50) for _ in range(rng.randrange(1, 9))])
      hit = mgr.get_computed_blocks(r)
      if mgr.allocate_slots(r, r.num_tokens - hit[1], *hit):
        r.num_computed_tokens = r.num_tokens
        mgr.cache_full_blocks(r)
        r.output_token_ids.append(rng.randrange(50))
        live.append(r)
    for r in list(live):
      if rng.random() < 0.2 or not mgr.allocate_slots(r, 1):
        mgr.free(r)                                  # finished, aborted or preempted
        live.remove(r)
      else:
        r.num_computed_tokens += 1
        r.output_token_ids.append(rng.randrange(50))
        mgr.cache_full_blocks(r)
  assert mgr.prefix_cache_stats.num_hit_tokens > 0
  for r in live:
    mgr.free(r)
  mgr.free("never-seen")
  mgr.free(live[0] if live else "x")                 # idempotent
  assert mgr.num_free_blocks == mgr.num_total_blocks == 39
  assert all(mgr.block_pool.ref_count(b) == 0 for b in range(1, 40))
  assert mgr.num_allocated_slots() == 0


def test_prefix_caching_off():
  mgr = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
  _prefill(mgr, _req("a", PROMPT))
  assert mgr.prefix_cache is None
  assert mgr.get_computed_blocks(_req("b", PROMPT)) == ([], 0)
  with pytest.raises(ValueError, match="prefix caching is off"):
    mgr.allocate_slots(_req("c", PROMPT), 2, [1, 2], 8)


def test_stale_hit_and_bad_arguments_raise():
  mgr = KVCacheManager(num_blocks=5, block_size=4)
  a = _req("a", PROMPT)
  _prefill(mgr, a)
  mgr.free(a)                                        # queue [4, 3, 2, 1]
  hit = mgr.get_computed_blocks(_req("b", PROMPT))
  assert mgr.allocate_slots(_req("z", list(range(16))), 16)   # evicts 1 and 2
  with pytest.raises(ValueError, match="stale"):
    mgr.allocate_slots(_req("b", PROMPT), 2, *hit)
  with pytest.raises(ValueError, match="does not match"):
    mgr.allocate_slots(_req("c", PROMPT), 2, [1], 8)
  with pytest.raises(ValueError):
    mgr.allocate_slots(_req("c", PROMPT), -1)


def test_blocks_needed_and_two_block_sizes_in_one_process():
  small = KVCacheManager(num_blocks=32, block_size=4)
  big = KVCacheManager(num_blocks=8, block_size=16)
  r = _req("r", PROMPT, max_tokens=20)
  assert small.num_blocks_needed(r, r.max_total_tokens) == 8
  assert big.num_blocks_needed(r, r.max_total_tokens) == 2
  _prefill(small, r)
  r.num_computed_tokens = 0
  _prefill(big, r)
  assert small.block_table("r") == [1, 2, 3] and big.block_table("r") == [1]
  assert small.num_blocks_needed(r, 30) == 5 and big.num_blocks_needed(r, 30) == 1
  assert small.can_allocate(28) and not small.can_allocate(29)
  assert big.prefix_cache.num_cached_blocks == 0 and small.prefix_cache.num_cached_blocks == 2
  assert (small.num_allocated_slots(), small.num_used_slots()) == (12, 10)
  assert (big.num_allocated_slots(), big.num_used_slots()) == (16, 10)
  assert small.usage == pytest.approx(3 / 31)
