"""A prompt as token ids: the one encoding rule of every path (host-only, no JAX).

`LLMEngine.add_request` and `LLM.chat`, the gRPC and HTTP APIs
(`serving/request_convert.py`), `pagedjax batch` and `generate`
(`serving/prompt_flags.py`) all encode through `encode_prompt`.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def encode_prompt(tokenizer, prompt: str | None = None,
                  messages: Sequence[Mapping[str, str]] | None = None) -> list[int]:
  """The ids of exactly one of a raw prompt and chat turns.

  NOTE: a raw prompt is the caller's whole prompt, template included: special-token
  text there is parsed (as vLLM and transformers do). Chat turns are rendered with
  the model's chat template plus the assistant cue, and their content is plain text:
  special-token text in it (e.g. `<|im_end|>`) is spelled out, never a role marker
  (`Tokenizer.encode_chat`). Raises ValueError without a tokenizer (or, for chat
  turns, without a chat template).
  """
  if (prompt is None) == (messages is None):
    raise ValueError("give exactly one of prompt and messages")
  if tokenizer is None:
    raise ValueError("this model has no tokenizer")
  if messages is not None:
    return list(tokenizer.encode_chat([dict(m) for m in messages], add_generation_prompt=True))
  return list(tokenizer.encode(prompt))


def check_token_ids(token_ids: Sequence[int], vocab_size: int) -> list[int]:
  """Caller-given prompt ids as ints; raises ValueError if empty or outside the vocabulary."""
  ids = [int(t) for t in token_ids]
  if not ids:
    raise ValueError("prompt_token_ids is empty")
  if any(not 0 <= t < vocab_size for t in ids):
    raise ValueError(f"prompt_token_ids must lie in [0, {vocab_size})")
  return ids
