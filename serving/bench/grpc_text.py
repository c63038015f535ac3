"""Text prompts with a given number of tokens, for APIs that take text only.

Token id t becomes word `WORDS[t % len(WORDS)]`, so prompts that share a token
prefix share a text prefix (and the server's prefix cache still sees it). The
words are those the server's tokenizer (its `Tokenize` RPC) makes one token each
after a space; the count is then checked with `Tokenize` and trimmed or padded.
"""
from __future__ import annotations

import asyncio

from serving.bench.workloads import BenchRequest
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb

CANDIDATES = tuple(
    "the of and to in is was for on that with as by at from this be are it an or have not "
    "but had his they were which one all she there their her would been has more when will "
    "who no if out so said what up its about into than them can only other new some time "
    "could these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take "
    "three".split())
_MAX_FIX_ROUNDS = 4


class TextPrompts:
  """Texts for a list of requests, built through a `pagedjax.v1.Inference` stub."""

  def __init__(self, stub):
    self._stub = stub
    self._words: list[str] = []
    self._texts: dict[str, str] = {}

  async def _count(self, text: str) -> int:
    reply = await self._stub.Tokenize(pb.TokenizeRequest(text=text))
    return reply.num_tokens

  async def _one_token_words(self) -> list[str]:
    counts = await asyncio.gather(*(self._count(f" {w} {w} {w}") for w in CANDIDATES),
                                  *(self._count(f" {w} {w}") for w in CANDIDATES))
    n = len(CANDIDATES)
    words = [w for i, w in enumerate(CANDIDATES) if counts[i] - counts[n + i] == 1]
    if len(words) < 16:
      raise RuntimeError("the server's tokenizer splits too many common words; "
                         "use the HTTP API (token-id prompts) instead")
    return words

  async def prepare(self, requests: list[BenchRequest]) -> None:
    self._words = await self._one_token_words()
    texts = await asyncio.gather(*(self._fit(r) for r in requests))
    self._texts = {r.request_id: t for r, t in zip(requests, texts)}

  async def _fit(self, r: BenchRequest) -> str:
    """A text of len(r.prompt_ids) tokens (closest reached in a few rounds)."""
    words = [self._words[t % len(self._words)] for t in r.prompt_ids]
    target = len(words)
    for _ in range(_MAX_FIX_ROUNDS):
      diff = await self._count(" " + " ".join(words)) - target
      if diff == 0:
        break
      if diff > 0:
        words = words[:max(1, len(words) - diff)]
      else:
        words += [self._words[len(words) % len(self._words)]] * -diff
    return " " + " ".join(words)

  def text(self, r: BenchRequest) -> str:
    return self._texts[r.request_id]
