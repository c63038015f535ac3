"""Per-request sampling parameters (vLLM-style), validated on construction."""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

# NOTE: the sampler works in float32. A temperature below MIN_TEMPERATURE
# scales logits past float32's range (1e-300 rounds to 0: logits / 0), one
# above MAX_TEMPERATURE is already indistinguishable from uniform sampling, and
# a top_p below MIN_TOP_P (a normal float32) is top-1 anyway: 1e-300 rounds to 0
# in float32 and the filter then keeps nothing.
MIN_TEMPERATURE = 1e-2
MAX_TEMPERATURE = 100.0
MIN_TOP_P = 1e-6
MAX_INT32 = 2 ** 31 - 1   # top_k and stop token ids travel to the device as int32


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick each next token of one request.

  temperature 0 means greedy; otherwise it must lie in [MIN_TEMPERATURE,
  MAX_TEMPERATURE]. top_k 0 (or -1) and top_p 1 and min_p 0 disable those
  filters; top_p lies in [MIN_TOP_P, 1]. Every float must be finite. A request
  with a seed gives the same output every time it is run with the same prompt,
  whatever else is in the batch.

  NOTE: these field defaults are the ONE set of sampling defaults of pagedjax:
  `LLM.generate`/`LLM.chat`, the gRPC server's unset fields, and the flags of
  `pagedjax generate`, `client` and `batch` (serving/sampling_flags.py reads
  them from here) all use them. They differ from vLLM's SamplingParams()
  (temperature 1, max_tokens 16): greedy, 128 tokens, so a plain call gives a
  whole, reproducible answer. Sampling needs an explicit temperature > 0;
  top_p, top_k, min_p and seed do nothing at temperature 0.
  """
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  min_p: float = 0.0
  seed: int | None = None
  max_tokens: int = 128
  stop: tuple[str, ...] = ()
  stop_token_ids: tuple[int, ...] = ()
  ignore_eos: bool = False
  logprobs: bool = False

  def __post_init__(self):
    # Accept lists from callers but store tuples so the object stays hashable.
    object.__setattr__(self, "stop", _as_tuple(self.stop, str, "stop"))
    object.__setattr__(self, "stop_token_ids",
                       _as_tuple(self.stop_token_ids, int, "stop_token_ids"))
    for name in ("temperature", "top_p", "min_p"):
      _check_finite(name, getattr(self, name))
    for name in ("top_k", "max_tokens"):
      _check_int(name, getattr(self, name))
    if self.temperature != 0.0 and not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
      raise ValueError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, "
                       f"{MAX_TEMPERATURE}], got {self.temperature}")
    if not MIN_TOP_P <= self.top_p <= 1.0:
      raise ValueError(f"top_p must be in [{MIN_TOP_P}, 1], got {self.top_p}")
    if not -1 <= self.top_k <= MAX_INT32:
      raise ValueError(f"top_k must be -1, 0 (off) or in [1, {MAX_INT32}], got {self.top_k}")
    if not 0.0 <= self.min_p <= 1.0:
      raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
    if self.max_tokens < 1:
      raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
    if any(s == "" for s in self.stop):
      raise ValueError("stop strings must be non-empty")
    if self.seed is not None and not 0 <= self.seed < 2 ** 63:
      raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
    if any(not 0 <= t <= MAX_INT32 for t in self.stop_token_ids):
      raise ValueError(f"stop_token_ids must be in [0, {MAX_INT32}]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def _check_finite(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"{name} must be an integer, got {value!r}")


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


__all__ = ["SamplingParams", "greedy", "Sequence", "MIN_TEMPERATURE", "MAX_TEMPERATURE",
           "MIN_TOP_P"]
