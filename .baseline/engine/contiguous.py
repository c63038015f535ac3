"""Contiguous KV cache baseline: one fixed region per request, first fit.

This is how servers allocated KV memory before paging: at admission a request
reserves one run of consecutive blocks covering `prompt + max_tokens` slots in
a linear arena (blocks 1..N-1), and keeps it until it finishes. The region
never grows or moves, so the arena fragments: an allocation can fail while
many blocks are free in total, just not side by side. Its block table is the
region's block ids, so the same paged kernels run on it unchanged.
"""
from __future__ import annotations

import bisect
from typing import Sequence

from engine.kv_cache_manager import BaseKVCacheManager
from engine.request import Request


class ContiguousKVCacheManager(BaseKVCacheManager):
  """First-fit contiguous allocator behind the KV cache manager interface."""

  def __init__(self, num_blocks: int, block_size: int):
    super().__init__(num_blocks, block_size)
    # NOTE: free holes as disjoint, non-adjacent (start, length) runs sorted by
    # start; adjacent holes are always merged on free.
    self._holes: list[tuple[int, int]] = [(1, num_blocks - 1)]
    self._regions: dict[str, tuple[int, int]] = {}

  @property
  def num_free_blocks(self) -> int:
    return sum(length for _, length in self._holes)

  def free_runs(self) -> list[tuple[int, int]]:
    """The free holes as (first block id, number of blocks), by address."""
    return list(self._holes)

  def largest_free_run(self) -> int:
    return max((length for _, length in self._holes), default=0)

  def can_allocate(self, num_blocks: int) -> bool:
    """Whether one hole of `num_blocks` consecutive blocks exists."""
    return num_blocks <= 0 or self.largest_free_run() >= num_blocks

  def region_blocks(self, request: Request) -> int:
    """Blocks the request's region covers: prompt + max_tokens slots."""
    return self.num_blocks_for_tokens(request.max_total_tokens)

  def num_blocks_needed(self, request: Request, num_tokens: int) -> int:
    if request.request_id in self._regions:
      return 0
    return self.num_blocks_for_tokens(max(num_tokens, request.max_total_tokens))

  def allocate_slots(self, request: Request, num_new_tokens: int,
                     computed_blocks: Sequence[int] = (), num_computed_tokens: int = 0) -> bool:
    if computed_blocks or num_computed_tokens:
      raise ValueError("the contiguous manager has no prefix cache")
    target = self._target_tokens(request, num_new_tokens, (), 0)
    rid = request.request_id
    region = self._regions.get(rid)
    if region is None:
      size = self.num_blocks_for_tokens(max(target, request.max_total_tokens))
      start = self._take_first_fit(size)
      if start is None:
        return False
      region = (start, size)
      self._regions[rid] = region
      self._tables[rid] = list(range(start, start + size))
    elif target > region[1] * self._block_size:
      raise ValueError(f"request {rid} needs {target} slots but reserved "
                       f"{region[1] * self._block_size}; regions never grow")
    self._num_tokens[rid] = max(self._num_tokens.get(rid, 0), target)
    return True

  def free(self, request: Request | str) -> None:
    rid = self._request_id(request)
    region = self._regions.pop(rid, None)
    self._tables.pop(rid, None)
    self._num_tokens.pop(rid, None)
    if region is not None and region[1] > 0:
      self._return_hole(*region)

  def _take_first_fit(self, size: int) -> int | None:
    """Carves `size` blocks from the lowest-addressed hole that fits."""
    for i, (start, length) in enumerate(self._holes):
      if length >= size:
        if length == size:
          del self._holes[i]
        else:
          self._holes[i] = (start + size, length - size)
        return start
    return None

  def _return_hole(self, start: int, length: int) -> None:
    """Puts a region back and merges it with adjacent holes."""
    i = bisect.bisect_left(self._holes, (start, 0))
    if i > 0:
      prev_start, prev_len = self._holes[i - 1]
      if prev_start + prev_len == start:
        start, length = prev_start, prev_len + length
        del self._holes[i - 1]
        i -= 1
    if i < len(self._holes) and start + length == self._holes[i][0]:
      length += self._holes[i][1]
      del self._holes[i]
    self._holes.insert(i, (start, length))
