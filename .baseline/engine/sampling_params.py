"""Per-request sampling parameters (vLLM-style), validated on construction."""
from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick each next token of one request.

  temperature 0 means greedy. top_k 0 (or -1) and top_p 1 and min_p 0 disable
  those filters. A request with a seed gives the same output every time it is
  run with the same prompt, whatever else is in the batch.
  """
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  min_p: float = 0.0
  seed: int | None = None
  max_tokens: int = 16
  stop: tuple[str, ...] = ()
  stop_token_ids: tuple[int, ...] = ()
  ignore_eos: bool = False
  logprobs: bool = False

  def __post_init__(self):
    # Accept lists from callers but store tuples so the object stays hashable.
    object.__setattr__(self, "stop", _as_tuple(self.stop, str, "stop"))
    object.__setattr__(self, "stop_token_ids",
                       _as_tuple(self.stop_token_ids, int, "stop_token_ids"))
    if not self.temperature >= 0.0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < -1:
      raise ValueError(f"top_k must be -1, 0 (off) or positive, got {self.top_k}")
    if not 0.0 <= self.min_p <= 1.0:
      raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
    if self.max_tokens < 1:
      raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
    if any(s == "" for s in self.stop):
      raise ValueError("stop strings must be non-empty")
    if self.seed is not None and not 0 <= self.seed < 2 ** 63:
      raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
    if any(t < 0 for t in self.stop_token_ids):
      raise ValueError("stop_token_ids must be non-negative")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def _as_tuple(value, kind, name) -> tuple:
  if isinstance(value, (str, int)):
    value = (value,)
  items = tuple(value)
  for item in items:
    if not isinstance(item, kind) or isinstance(item, bool):
      raise ValueError(f"{name} must hold {kind.__name__} values, got {item!r}")
  return items


def greedy(max_tokens: int = 16, **kwargs) -> SamplingParams:
  return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kwargs)


__all__ = ["SamplingParams", "greedy", "Sequence"]
