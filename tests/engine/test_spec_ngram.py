"""The n-gram proposer against a brute-force scan, incrementally and from scratch."""
from __future__ import annotations

import dataclasses
import random

import pytest

from engine.spec.ngram import NgramConfig, NgramProposer


@dataclasses.dataclass
class Tokens:
  request_id: str
  ids: list[int]

  @property
  def num_tokens(self) -> int:
    return len(self.ids)

  def token_at(self, index: int) -> int:
    return self.ids[index]


def brute_force(ids: list[int], config: NgramConfig, limit: int) -> list[int]:
  """The longest suffix (max_n..min_n) seen earlier with a next token; the latest one."""
  for n in range(config.max_n, config.min_n - 1, -1):
    if n >= len(ids):
      continue
    suffix = ids[-n:]
    for end in range(len(ids) - 1, n - 1, -1):       # end exclusive, end < len(ids)
      if ids[end - n:end] == suffix:
        return ids[end:end + min(limit, config.num_speculative_tokens)]
  return []


def test_quotes_the_continuation_of_the_latest_match():
  p = NgramProposer(NgramConfig(num_speculative_tokens=3, min_n=2, max_n=3))
  #        0  1  2  3  4  5  6  7  8  9
  ids = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3]
  assert p.propose(Tokens("a", ids + [6, 7])) == [2, 3, 6]     # latest "6 7" is at 6..7
  assert p.propose(Tokens("b", [5, 6, 7, 8, 0, 5, 6, 7])) == [8, 0, 5]   # "5 6 7": 3-gram
  assert p.propose(Tokens("c", [1, 2, 3, 4])) == []            # no repeat
  assert p.propose(Tokens("d", [1, 2, 3, 1, 2]), max_drafts=1) == [3]
  assert p.propose(Tokens("e", [1, 2, 1, 2]), max_drafts=0) == []


def test_longest_match_wins_over_a_later_shorter_one():
  p = NgramProposer(NgramConfig(num_speculative_tokens=2, min_n=1, max_n=3))
  ids = [1, 2, 3, 40, 41, 9, 3, 50, 51, 1, 2, 3]
  assert p.propose(Tokens("a", ids)) == [40, 41]               # "1 2 3", not the later "3"


def test_the_match_is_capped_at_the_known_tokens():
  p = NgramProposer(NgramConfig(num_speculative_tokens=5, min_n=1, max_n=2))
  assert p.propose(Tokens("a", [7, 7, 7])) == [7]              # "7 7" ends at 2: one token left


@pytest.mark.parametrize("seed", range(6))
def test_incremental_index_equals_a_scan(seed):
  rng = random.Random(seed)
  config = NgramConfig(num_speculative_tokens=rng.randint(1, 6), min_n=rng.randint(1, 2),
                       max_n=rng.randint(2, 5))
  p = NgramProposer(config)
  req = Tokens("r", [rng.randrange(6) for _ in range(rng.randint(1, 4))])
  for _ in range(120):
    limit = rng.randint(0, 7)
    assert p.propose(req, max_drafts=limit) == brute_force(req.ids, config, limit), req.ids
    req.ids += [rng.randrange(6) for _ in range(rng.choice([0, 1, 1, 1, 3]))]
  fresh = NgramProposer(config)
  assert fresh.propose(req) == p.propose(req) == brute_force(req.ids, config, 99)


def test_forget_drops_the_index():
  p = NgramProposer(NgramConfig())
  p.propose(Tokens("a", [1, 2, 1]))
  p.forget("a")
  p.forget("never-seen")
  assert p.propose(Tokens("a", [3, 4, 3])) == [4, 3]           # rebuilt from the new tokens


@pytest.mark.parametrize("kw", [dict(num_speculative_tokens=0), dict(min_n=0),
                                dict(min_n=3, max_n=2), dict(max_n=33), dict(max_n=0)])
def test_bad_configs_are_refused(kw):
  with pytest.raises(ValueError):
    NgramConfig(**kw)
