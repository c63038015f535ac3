"""N-gram ("prompt lookup") proposer: draft tokens copied from the request's own text.

If the last n tokens of a request (prompt + output) occurred earlier in it, the
tokens that followed that occurrence are proposed as the next ones, for n from
`max_n` down to `min_n` (the longest match wins; of equal ones, the latest).
Quoting, summarising and code editing repeat their input, so such drafts are
often right; the verify step checks them (engine/spec/rejection.py).

Host-only (no JAX). Per request, an index maps every n-gram to the end of its
latest occurrence; it is extended by the tokens appended since the last call,
so a proposal costs O(max_n - min_n + 1) lookups plus the new tokens, not a
scan of the context.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol


class TokenSource(Protocol):
  """What the proposer reads of a request (`engine.request.Request` is one)."""
  request_id: str

  @property
  def num_tokens(self) -> int: ...

  def token_at(self, index: int) -> int: ...


@dataclasses.dataclass(frozen=True)
class NgramConfig:
  num_speculative_tokens: int = 4   # k: drafts proposed per step at most
  min_n: int = 1                    # shortest suffix that may match
  max_n: int = 4                    # longest suffix tried first

  def __post_init__(self):
    if not 1 <= self.num_speculative_tokens <= 32:
      raise ValueError("num_speculative_tokens must be in 1..32, got "
                       f"{self.num_speculative_tokens}")
    # NOTE: named as the engine options that set them (EngineConfig, the CLI flags).
    if not 1 <= self.max_n <= 32:
      raise ValueError(f"ngram_prompt_lookup_max must be in 1..32, got {self.max_n}")
    if not 1 <= self.min_n <= self.max_n:
      raise ValueError(f"ngram_prompt_lookup_min must be in 1..ngram_prompt_lookup_max "
                       f"({self.max_n}), got {self.min_n}")


@dataclasses.dataclass
class _Index:
  """N-gram -> end (exclusive) of its latest occurrence that has a next token."""
  ends: dict[tuple[int, ...], int] = dataclasses.field(default_factory=dict)
  num_indexed: int = 0          # n-grams ending before this position are in `ends`
  tail: list[int] = dataclasses.field(default_factory=list)   # the last max_n tokens seen


class NgramProposer:
  """Proposes up to k drafts per request; keeps one index per live request."""

  def __init__(self, config: NgramConfig):
    self.config = config
    self._index: dict[str, _Index] = {}

  @property
  def k(self) -> int:
    return self.config.num_speculative_tokens

  def propose(self, request: TokenSource, max_drafts: int | None = None) -> list[int]:
    """Drafts continuing `request`'s tokens: at most min(k, max_drafts), maybe none."""
    limit = self.k if max_drafts is None else min(self.k, max_drafts)
    n_tokens = request.num_tokens
    if limit < 1 or n_tokens < self.config.min_n + 1:
      return []
    index = self._updated(request)
    for n in range(min(self.config.max_n, n_tokens - 1), self.config.min_n - 1, -1):
      end = index.ends.get(tuple(index.tail[-n:]))
      if end is not None:
        # NOTE: end <= n_tokens - 1, so at least one token follows the match.
        stop = min(end + limit, n_tokens)
        return [request.token_at(i) for i in range(end, stop)]
    return []

  def forget(self, request_id: str) -> None:
    """Drops a finished request's index (a no-op for an unknown one)."""
    self._index.pop(request_id, None)

  def _updated(self, request: TokenSource) -> _Index:
    """The request's index, extended to every n-gram that ends before its last token.

    NOTE: tokens are only ever appended (preemption keeps them), so an index
    stays valid for the request's whole life.
    """
    index = self._index.setdefault(request.request_id, _Index())
    n_tokens, max_n = request.num_tokens, self.config.max_n
    # `tail` holds the max_n tokens before position num_indexed; walk it forward.
    for end in range(index.num_indexed, n_tokens):
      if end:
        self._add(index, end)
      index.tail.append(request.token_at(end))
      if len(index.tail) > max_n:
        del index.tail[0]
    index.num_indexed = n_tokens
    return index

  def _add(self, index: _Index, end: int) -> None:
    """Records the n-grams ending at `end` (exclusive): those in `tail` right now."""
    tail = index.tail
    for n in range(self.config.min_n, min(self.config.max_n, len(tail)) + 1):
      index.ends[tuple(tail[-n:])] = end
