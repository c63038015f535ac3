"""The engine's context limit (`max_model_len`): where it comes from, and its rules.

One place for the rules every admission path shares (the engine, the gRPC
servicer, the batch runner): how long a prompt may be, how many tokens a
request may generate, and that the KV cache can hold one request of
`max_model_len` tokens. Host-only: no JAX.
"""
from __future__ import annotations

import dataclasses

DEFAULT_MAX_MODEL_LEN = 4096   # the default cap when max_model_len is not set


@dataclasses.dataclass(frozen=True)
class ContextLimit:
  """`tokens`: the most prompt + output tokens of one request; `source`: what set it."""
  tokens: int
  source: str

  def describe(self) -> str:
    return f"max_model_len = {self.tokens} tokens ({self.source})"


def cache_capacity(num_blocks: int, block_size: int) -> int:
  """Tokens the whole KV cache holds (block 0 is the null block)."""
  return (num_blocks - 1) * block_size


def check_fits_cache(max_model_len: int, num_blocks: int, block_size: int,
                     sized_by: str) -> None:
  """Refuses a `max_model_len` that one request alone could outgrow the cache with.

  NOTE: with max_model_len <= the cache's capacity, a request that has the
  whole cache to itself always finishes (preemption makes room), so the
  scheduler never has to fail one for memory after it streamed tokens.
  """
  capacity = cache_capacity(num_blocks, block_size)
  if max_model_len > capacity:
    raise ValueError(
        f"max_model_len {max_model_len} (--max-model-len) is more than the KV cache holds: "
        f"{num_blocks - 1} blocks x {block_size} tokens = {capacity} tokens ({sized_by}); "
        "lower --max-model-len or give the cache more blocks")


def resolve(max_model_len: int | None, max_position_embeddings: int, num_blocks: int,
            block_size: int, sized_by: str, allow_small_kv_cache: bool = False) -> ContextLimit:
  """The engine's `max_model_len` and what set it.

  Unset: min(model context, DEFAULT_MAX_MODEL_LEN, what the KV cache holds).
  Set: capped at the model's context; raises ValueError if it is more than the
  KV cache holds. `allow_small_kv_cache` (research runs that count requests
  failing for memory) drops the KV-cache rule from both.
  """
  if max_model_len is not None:
    tokens = min(max_model_len, max_position_embeddings)
    source = ("set by --max-model-len" if tokens == max_model_len else
              f"the model's context; --max-model-len {max_model_len} is capped to it")
    if not allow_small_kv_cache:
      check_fits_cache(tokens, num_blocks, block_size, sized_by)
    return ContextLimit(tokens, source)
  candidates = [(max_position_embeddings, "the model's context"),
                (DEFAULT_MAX_MODEL_LEN, f"the default cap of {DEFAULT_MAX_MODEL_LEN}")]
  if not allow_small_kv_cache:
    candidates.append((cache_capacity(num_blocks, block_size),
                       f"what the KV cache holds: {num_blocks - 1} blocks x {block_size} "
                       f"tokens, {sized_by}"))
  tokens, source = min(candidates, key=lambda c: c[0])
  return ContextLimit(tokens, source)


def check_prompt(num_tokens: int, limit: ContextLimit, field: str = "prompt") -> None:
  """Raises ValueError if a prompt leaves no room for one generated token."""
  if num_tokens + 1 > limit.tokens:
    raise ValueError(f"{field} has {num_tokens} tokens; with one generated token that exceeds "
                     f"{limit.describe()}")


def tokens_left(max_tokens: int, num_output_tokens: int, num_tokens: int,
                max_model_len: int) -> int:
  """The one length rule: tokens a request of `num_tokens` (prompt + outputs, of which
  `num_output_tokens` generated) may still generate under `max_tokens` and the context."""
  return min(max_tokens - num_output_tokens, max_model_len - num_tokens)


def max_new_tokens(max_tokens: int, num_prompt_tokens: int, limit: ContextLimit) -> int:
  """`max_tokens` capped so prompt + output fit `limit` (vLLM's rule: cap, not refuse)."""
  return max(1, tokens_left(max_tokens, 0, num_prompt_tokens, limit.tokens))
