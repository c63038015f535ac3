"""What the engine hands back to callers: per-step deltas and finished outputs."""
from __future__ import annotations

import dataclasses
import enum
from typing import Sequence


class FinishReason(str, enum.Enum):
  STOP = "stop"          # EOS, a stop token id or a stop string
  LENGTH = "length"      # max_tokens reached (or max_model_len)
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


class OutputAccumulator:
  """One request's deltas joined into its whole output: the one place that builds a final
  answer from a stream (`LLM.generate`, `pagedjax batch`, unary gRPC and HTTP)."""

  def __init__(self, deltas: Sequence[TokenDelta] = ()):
    self.token_ids: list[int] = []
    self.logprobs: list[float] = []
    self.last: TokenDelta | None = None
    self._texts: list[str] = []
    for d in deltas:
      self.add(d)

  def add(self, d: TokenDelta) -> None:
    self._texts.append(d.text)
    self.token_ids += d.token_ids
    self.logprobs += d.logprobs or []
    self.last = d

  @property
  def text(self) -> str:
    return "".join(self._texts)

  def output(self, prompt: str | None, prompt_token_ids: list[int]) -> RequestOutput:
    """The finished request (its last delta added)."""
    d = self.last
    return RequestOutput(request_id=d.request_id, prompt=prompt,
                         prompt_token_ids=prompt_token_ids, text=self.text,
                         token_ids=self.token_ids, finish_reason=d.finish_reason,
                         usage=d.usage, logprobs=self.logprobs or None, error=d.error)
