"""Contiguous baseline: first fit, fixed regions, external fragmentation."""
from __future__ import annotations

import pytest

from engine.contiguous import ContiguousKVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams


def _req(rid: str, prompt_len: int, max_tokens: int) -> Request:
  return Request(rid, list(range(prompt_len)), SamplingParams(max_tokens=max_tokens))


def test_reserves_prompt_plus_max_tokens_first_fit():
  mgr = ContiguousKVCacheManager(num_blocks=17, block_size=4)   # arena 1..16
  r1, r2, r3 = _req("r1", 10, 6), _req("r2", 3, 5), _req("r3", 8, 8)
  assert mgr.num_blocks_needed(r1, 10) == 4
  assert mgr.allocate_slots(r1, 10)
  assert mgr.block_table("r1") == [1, 2, 3, 4]                  # 16 slots, not 12
  assert mgr.allocate_slots(r2, 3)
  assert mgr.block_table("r2") == [5, 6]
  assert mgr.allocate_slots(r3, 8)
  assert mgr.block_table("r3") == [7, 8, 9, 10]
  assert mgr.free_runs() == [(11, 6)]
  mgr.free(r2)
  assert mgr.free_runs() == [(5, 2), (11, 6)]
  r4 = _req("r4", 2, 6)                                         # 2 blocks: fits the first hole
  assert mgr.allocate_slots(r4, 2)
  assert mgr.block_table("r4") == [5, 6]
  r5 = _req("r5", 1, 8)                                         # 3 blocks: next hole
  assert mgr.allocate_slots(r5, 1)
  assert mgr.block_table("r5") == [11, 12, 13]
  assert (mgr.num_allocated_slots(), mgr.num_used_slots()) == (13 * 4, 10 + 8 + 2 + 1)


def test_fails_with_enough_free_blocks_but_no_hole():
  mgr = ContiguousKVCacheManager(num_blocks=17, block_size=4)
  reqs = [_req(f"r{i}", 8, 8) for i in range(4)]                 # 4 blocks each
  for r in reqs:
    assert mgr.allocate_slots(r, 8)
  mgr.free(reqs[0])
  mgr.free(reqs[2])
  assert mgr.num_free_blocks == 8 and mgr.largest_free_run() == 4
  big = _req("big", 10, 10)                                     # needs 5 blocks
  assert mgr.can_allocate(4) and not mgr.can_allocate(5)
  assert not mgr.allocate_slots(big, 10)
  assert not mgr.has_request("big") and mgr.block_table("big") == []
  assert mgr.free_runs() == [(1, 4), (9, 4)]
  assert mgr.usage == pytest.approx(0.5)
  # Freeing the block between the holes merges them into one run of 12.
  mgr.free(reqs[1])
  assert mgr.free_runs() == [(1, 12)]
  assert mgr.allocate_slots(big, 10)
  assert mgr.block_table("big") == [1, 2, 3, 4, 5]


def test_region_never_grows_or_moves():
  mgr = ContiguousKVCacheManager(num_blocks=9, block_size=4)
  r = _req("r", 5, 3)                                           # 8 slots, 2 blocks
  assert mgr.allocate_slots(r, 5)
  r.num_computed_tokens = 5
  free_before = mgr.num_free_blocks
  assert mgr.allocate_slots(r, 1) and mgr.allocate_slots(r, 3)
  assert mgr.block_table("r") == [1, 2] and mgr.num_free_blocks == free_before
  assert mgr.num_blocks_needed(r, 8) == 0
  with pytest.raises(ValueError, match="never grow"):
    mgr.allocate_slots(r, 4)
  assert mgr.get_computed_blocks(r) == ([], 0)
  with pytest.raises(ValueError, match="no prefix cache"):
    mgr.allocate_slots(_req("x", 8, 1), 4, [1], 4)


def test_no_leaks_after_all_requests_freed():
  mgr = ContiguousKVCacheManager(num_blocks=33, block_size=2)
  reqs = [_req(f"r{i}", 1 + i % 5, 1 + (3 * i) % 7) for i in range(12)]
  admitted = [r for r in reqs if mgr.allocate_slots(r, r.num_prompt_tokens)]
  assert len(admitted) < len(reqs)                              # the arena filled up
  for r in admitted[::2] + admitted[1::2]:                      # out of order
    mgr.free(r)
  mgr.free("unknown")
  assert mgr.free_runs() == [(1, 32)]
  assert mgr.num_free_blocks == mgr.num_total_blocks == 32
  assert mgr.num_allocated_slots() == 0 == mgr.num_used_slots()
