"""What the engine hands back to callers: per-step deltas and finished outputs."""
from __future__ import annotations

import dataclasses
import enum


class FinishReason(str, enum.Enum):
  STOP = "stop"          # EOS, a stop token id or a stop string
  LENGTH = "length"      # max_tokens reached (or the model's context is full)
  ABORT = "abort"        # cancelled by the caller
  ERROR = "error"        # rejected (e.g. the prompt can never fit)


@dataclasses.dataclass
class Usage:
  prompt_tokens: int = 0
  cached_prompt_tokens: int = 0   # prompt tokens served from the prefix cache
  completion_tokens: int = 0
  time_to_first_token_s: float | None = None


@dataclasses.dataclass
class TokenDelta:
  """The new tokens one request produced in one `LLMEngine.step()`.

  `text` is the newly decodable text (never half a UTF-8 character, never any
  part of a stop string). When `finished` is true this is the request's last
  delta and `finish_reason` and `usage` are set.
  """
  request_id: str
  token_ids: list[int]
  text: str
  logprobs: list[float] | None = None
  finished: bool = False
  finish_reason: FinishReason | None = None
  usage: Usage | None = None
  error: str | None = None


@dataclasses.dataclass
class RequestOutput:
  """A whole finished request, as returned by `LLM.generate`."""
  request_id: str
  prompt: str | None
  prompt_token_ids: list[int]
  text: str
  token_ids: list[int]
  finish_reason: FinishReason
  usage: Usage
  logprobs: list[float] | None = None
  error: str | None = None
