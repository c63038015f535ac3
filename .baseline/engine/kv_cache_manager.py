"""KV cache managers: which KV blocks each request holds (host side only).

`BaseKVCacheManager` is the interface the scheduler calls; `KVCacheManager`
is the paged implementation over a `BlockPool` with an optional prefix cache
(the contiguous baseline lives in `engine.contiguous`). Managers never touch
device arrays and never mutate a `Request`: the scheduler owns request state
(e.g. `num_computed_tokens`) and the managers only read it.
"""
from __future__ import annotations

import abc
from typing import Sequence

from engine.block_pool import BlockPool
from engine.prefix_cache import BlockHash, PrefixCache, PrefixCacheStats, hash_block
from engine.request import Request


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


class BaseKVCacheManager(abc.ABC):
  """What the scheduler needs from a KV cache allocator."""

  def __init__(self, num_blocks: int, block_size: int):
    if block_size < 1:
      raise ValueError(f"block_size must be >= 1, got {block_size}")
    if num_blocks < 2:
      raise ValueError(f"num_blocks must be >= 2 (block 0 is the null block), got {num_blocks}")
    self._block_size = block_size
    self._num_blocks = num_blocks
    self._tables: dict[str, list[int]] = {}
    # Tokens each request has reserved slots for (high-water mark): waste accounting.
    self._num_tokens: dict[str, int] = {}

  @property
  def block_size(self) -> int:
    return self._block_size

  @property
  def num_blocks(self) -> int:
    """All blocks of the device cache, including the null block 0."""
    return self._num_blocks

  @property
  def num_total_blocks(self) -> int:
    """Blocks that can hold a request's tokens (excludes the null block)."""
    return self._num_blocks - 1

  @property
  @abc.abstractmethod
  def num_free_blocks(self) -> int: ...

  @property
  def num_used_blocks(self) -> int:
    return self.num_total_blocks - self.num_free_blocks

  @property
  def usage(self) -> float:
    return self.num_used_blocks / self.num_total_blocks

  @property
  def prefix_caching_enabled(self) -> bool:
    return False

  @property
  def prefix_cache_stats(self) -> PrefixCacheStats:
    return PrefixCacheStats()

  def has_request(self, request_id: str) -> bool:
    return request_id in self._tables

  def block_table(self, request_id: str) -> list[int]:
    """The request's block ids in token order (empty if it holds none)."""
    return list(self._tables.get(request_id, ()))

  def num_blocks_for_tokens(self, num_tokens: int) -> int:
    return cdiv(max(0, num_tokens), self._block_size)

  def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
    """The prefix-cache hit for a waiting request: (block ids, num tokens)."""
    del request
    return [], 0

  @abc.abstractmethod
  def can_allocate(self, num_blocks: int) -> bool:
    """Whether `num_blocks` new blocks could be handed to one request now."""

  @abc.abstractmethod
  def num_blocks_needed(self, request: Request, num_tokens: int) -> int:
    """New blocks the request must get to hold `num_tokens` tokens in total."""

  @abc.abstractmethod
  def allocate_slots(self, request: Request, num_new_tokens: int,
                     computed_blocks: Sequence[int] = (), num_computed_tokens: int = 0) -> bool:
    """Ensures slots for request.num_computed_tokens + num_computed_tokens +
    num_new_tokens tokens; False (and nothing changed) if impossible."""

  def cache_full_blocks(self, request: Request) -> None:
    """Registers the request's newly filled full blocks in the prefix cache."""
    del request

  @abc.abstractmethod
  def free(self, request: Request | str) -> None:
    """Releases all blocks of a request; a no-op for an unknown request."""

  def num_allocated_slots(self) -> int:
    """Token slots held by live requests (distinct physical slots)."""
    return len(self._held_blocks()) * self._block_size

  def num_used_slots(self) -> int:
    """Of the allocated slots, those reserved for a real token of a request.

    NOTE: counts tokens up to each request's high-water mark passed to
    `allocate_slots`; allocated minus used is the memory wasted on padding
    (paged: the last block's tail) or on reservations (contiguous).
    """
    fill: dict[int, int] = {}
    bs = self._block_size
    for request_id, table in self._tables.items():
      n = self._num_tokens[request_id]
      for i, block_id in enumerate(table):
        filled = min(bs, max(0, n - i * bs))
        fill[block_id] = max(fill.get(block_id, 0), filled)
    return sum(fill.values())

  def _held_blocks(self) -> set[int]:
    return {b for table in self._tables.values() for b in table}

  @staticmethod
  def _request_id(request: Request | str) -> str:
    return request if isinstance(request, str) else request.request_id

  def _target_tokens(self, request: Request, num_new_tokens: int,
                     computed_blocks: Sequence[int], num_computed_tokens: int) -> int:
    if num_new_tokens < 0:
      raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
    if num_computed_tokens != len(computed_blocks) * self._block_size:
      raise ValueError(f"num_computed_tokens={num_computed_tokens} does not match "
                       f"{len(computed_blocks)} computed blocks of {self._block_size}")
    if computed_blocks and self._tables.get(request.request_id):
      raise ValueError(f"request {request.request_id} already holds blocks; "
                       "computed blocks are only taken at admission")
    return request.num_computed_tokens + num_computed_tokens + num_new_tokens


class KVCacheManager(BaseKVCacheManager):
  """Paged KV cache: blocks allocated on demand from a shared `BlockPool`."""

  def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
    super().__init__(num_blocks, block_size)
    self._prefix_cache = PrefixCache(block_size) if enable_prefix_caching else None
    self.block_pool = BlockPool(num_blocks, self._prefix_cache)
    # Chained hashes of each request's leading full blocks, in order.
    self._hashes: dict[str, list[BlockHash]] = {}

  @property
  def prefix_cache(self) -> PrefixCache | None:
    return self._prefix_cache

  @property
  def prefix_caching_enabled(self) -> bool:
    return self._prefix_cache is not None

  @property
  def prefix_cache_stats(self) -> PrefixCacheStats:
    return self._prefix_cache.stats if self._prefix_cache is not None else PrefixCacheStats()

  @property
  def num_free_blocks(self) -> int:
    return self.block_pool.num_free_blocks

  def can_allocate(self, num_blocks: int) -> bool:
    return num_blocks <= self.block_pool.num_free_blocks

  def num_blocks_needed(self, request: Request, num_tokens: int) -> int:
    held = len(self._tables.get(request.request_id, ()))
    return max(0, self.num_blocks_for_tokens(num_tokens) - held)

  def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
    """Longest cached prefix of prompt + outputs, never covering the last token.

    NOTE: the hit is capped at the whole blocks that end strictly before the
    last token of `all_token_ids`: that token must be recomputed for logits.
    """
    if self._prefix_cache is None:
      return [], 0
    tokens = request.all_token_ids
    max_blocks = (len(tokens) - 1) // self._block_size
    hits = self._prefix_cache.lookup(tokens, request.cache_salt, max_blocks=max_blocks)
    return hits, len(hits) * self._block_size

  def allocate_slots(self, request: Request, num_new_tokens: int,
                     computed_blocks: Sequence[int] = (), num_computed_tokens: int = 0) -> bool:
    computed_blocks = list(computed_blocks)
    target = self._target_tokens(request, num_new_tokens, computed_blocks, num_computed_tokens)
    rid = request.request_id
    held = len(self._tables.get(rid, ()))
    num_new_blocks = max(0, self.num_blocks_for_tokens(target) - held - len(computed_blocks))
    # NOTE: most decode steps take neither a hit nor a new block: nothing below runs.
    if computed_blocks and not self._acquire_hit(computed_blocks, num_new_blocks):
      return False
    if num_new_blocks > self.block_pool.num_free_blocks:
      return False
    table = self._tables.setdefault(rid, [])
    table.extend(computed_blocks)
    if num_new_blocks:
      table.extend(self.block_pool.allocate(num_new_blocks))
    self._num_tokens[rid] = max(self._num_tokens.get(rid, 0), target)
    if computed_blocks and self._prefix_cache is not None:
      self._hashes[rid] = [self._prefix_cache.block_hash(b) for b in computed_blocks]
    return True

  def _acquire_hit(self, computed_blocks: list[int], num_new_blocks: int) -> bool:
    """Takes a reference on the hit blocks if they and `num_new_blocks` more fit.

    NOTE: acquire before allocate, so allocating cannot evict a hit block. Hits
    on freed cached blocks also take blocks out of the free queue.
    """
    self._check_hit(computed_blocks)
    num_revived = sum(1 for b in set(computed_blocks) if self.block_pool.ref_count(b) == 0)
    if num_new_blocks + num_revived > self.block_pool.num_free_blocks:
      return False
    self.block_pool.acquire(computed_blocks)
    return True

  def _check_hit(self, computed_blocks: list[int]) -> None:
    """Rejects a hit that is no longer a cached chain (evicted since lookup)."""
    if self._prefix_cache is None:
      raise ValueError("computed blocks given but prefix caching is off")
    parent = None
    for block_id in computed_blocks:
      entry = self._prefix_cache.entry(block_id)
      if entry is None or entry.parent_hash != parent:
        raise ValueError(f"stale prefix hit: block {block_id} is no longer cached "
                         "as part of this chain; call get_computed_blocks again")
      parent = entry.block_hash

  def cache_full_blocks(self, request: Request) -> None:
    """Hashes and registers the request's full blocks computed since last time."""
    if self._prefix_cache is None:
      return
    rid = request.request_id
    table = self._tables.get(rid)
    if not table:
      return
    num_computed = min(request.num_computed_tokens, request.num_tokens)
    num_full = min(num_computed // self._block_size, len(table))
    hashes = self._hashes.setdefault(rid, [])
    if len(hashes) >= num_full:
      return                      # NOTE: the common case; no token list is built
    tokens = request.all_token_ids
    bs = self._block_size
    for i in range(len(hashes), num_full):
      parent = hashes[-1] if hashes else None
      block_tokens = tokens[i * bs:(i + 1) * bs]
      block_hash = hash_block(parent, block_tokens, request.cache_salt)
      self._prefix_cache.insert(table[i], block_hash, parent, block_tokens)
      hashes.append(block_hash)

  def free(self, request: Request | str) -> None:
    rid = self._request_id(request)
    table = self._tables.pop(rid, None)
    self._hashes.pop(rid, None)
    self._num_tokens.pop(rid, None)
    if table:
      self.block_pool.release(reversed(table))


PagedKVCacheManager = KVCacheManager
