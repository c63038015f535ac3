"""The incident's traffic as a generator, and a JSONL trace format to replay it.

Two products share one gateway: a support chat (short outputs) and a report
generator (long outputs), both starting with the same system prompt(s). A
trace line describes one request; its prompt is either explicit token ids or
(system prompt index, user prompt length, seed), materialized for a given
vocabulary by `TraceRequest.prompt_token_ids`, so one trace replays on any
model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np

from engine.sampling_params import SamplingParams

PRODUCTS = ("chat", "report")
_SYSTEM_PROMPT_STREAM = 0x5157   # NOTE: fixed, so system prompt i has the same ids in every trace


@dataclasses.dataclass(frozen=True)
class WorkloadConfig:
  """Knobs of the incident workload. Lengths are multiplied by `scale` (for CPU runs)."""
  num_requests: int = 200
  rate: float = 2.0                  # Poisson arrivals per second
  chat_fraction: float = 0.7         # share of product A (chat); the rest are reports
  system_prompt_len: int = 220
  num_system_prompts: int = 1
  num_tenants: int = 1
  salt_by_tenant: bool = True        # cache_salt = tenant name (else None: one shared cache)
  user_prompt_min: int = 20
  user_prompt_max: int = 2000        # log-uniform between min and max
  chat_output_len: int = 50
  report_output_len: int = 1500
  output_spread: float = 0.3         # uniform +-spread around the product's output length
  scale: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.num_requests < 1:
      raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
    if not self.rate > 0:
      raise ValueError(f"rate must be > 0, got {self.rate}")
    if not 0.0 <= self.chat_fraction <= 1.0:
      raise ValueError(f"chat_fraction must be in [0, 1], got {self.chat_fraction}")
    if self.num_system_prompts < 1 or self.num_tenants < 1:
      raise ValueError("num_system_prompts and num_tenants must be >= 1")
    if not 1 <= self.user_prompt_min <= self.user_prompt_max:
      raise ValueError("need 1 <= user_prompt_min <= user_prompt_max")
    if self.system_prompt_len < 0 or self.chat_output_len < 1 or self.report_output_len < 1:
      raise ValueError("system_prompt_len must be >= 0 and output lengths >= 1")
    if not 0.0 <= self.output_spread < 1.0:
      raise ValueError(f"output_spread must be in [0, 1), got {self.output_spread}")
    if not self.scale > 0:
      raise ValueError(f"scale must be > 0, got {self.scale}")


@dataclasses.dataclass(frozen=True)
class TraceRequest:
  """One request of a trace. Either `token_ids` or the synthetic prompt fields are used."""
  request_id: str
  arrival_time: float                # seconds from the start of the trace
  product: str
  max_tokens: int
  tenant: str = "t0"
  cache_salt: str | None = None
  system_prompt: int = 0             # index of the shared system prompt
  system_prompt_len: int = 0
  user_prompt_len: int = 0
  seed: int = 0                      # draws the user prompt's token ids
  ignore_eos: bool = True
  token_ids: tuple[int, ...] | None = None   # explicit prompt (real traces)

  def __post_init__(self):
    if not self.request_id:
      raise ValueError("request_id must be non-empty")
    if self.arrival_time < 0 or not math.isfinite(self.arrival_time):
      raise ValueError(f"{self.request_id}: arrival_time must be finite and >= 0")
    if self.max_tokens < 1:
      raise ValueError(f"{self.request_id}: max_tokens must be >= 1")
    if self.token_ids is not None:
      object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
      if not self.token_ids:
        raise ValueError(f"{self.request_id}: token_ids is empty")
    elif self.system_prompt_len + self.user_prompt_len < 1:
      raise ValueError(f"{self.request_id}: the prompt is empty")

  def sampling_params(self) -> SamplingParams:
    """Greedy, `max_tokens` long (ignore_eos keeps output lengths as in the trace)."""
    return SamplingParams(temperature=0.0, max_tokens=self.max_tokens,
                          ignore_eos=self.ignore_eos)

  @property
  def prompt_len(self) -> int:
    if self.token_ids is not None:
      return len(self.token_ids)
    return self.system_prompt_len + self.user_prompt_len

  @property
  def total_len(self) -> int:
    """Prompt plus every token the request may generate."""
    return self.prompt_len + self.max_tokens

  def prompt_token_ids(self, vocab_size: int) -> list[int]:
    """The prompt's token ids for a model with `vocab_size` tokens (ids 1..vocab-1)."""
    if self.token_ids is not None:
      if max(self.token_ids) >= vocab_size or min(self.token_ids) < 0:
        raise ValueError(f"{self.request_id}: token ids outside [0, {vocab_size})")
      return list(self.token_ids)
    system = system_prompt_ids(self.system_prompt, self.system_prompt_len, vocab_size)
    rng = np.random.default_rng(self.seed)
    user = rng.integers(1, vocab_size, size=self.user_prompt_len)   # [user_prompt_len]
    return system + [int(t) for t in user]


def system_prompt_ids(index: int, length: int, vocab_size: int) -> list[int]:
  """Token ids of shared system prompt `index`: the same in every request and trace."""
  rng = np.random.default_rng([_SYSTEM_PROMPT_STREAM, index])
  return [int(t) for t in rng.integers(1, vocab_size, size=length)]


def _scaled(n: float, scale: float) -> int:
  return max(1, int(round(n * scale)))


def generate(config: WorkloadConfig) -> list[TraceRequest]:
  """Draws the trace: Poisson arrivals, product mix, prompt and output lengths."""
  c = config
  rng = np.random.default_rng(c.seed)
  gaps = rng.exponential(1.0 / c.rate, size=c.num_requests)            # [n]
  arrivals = np.cumsum(gaps) - gaps[0]                                 # first request at t=0
  is_chat = rng.random(c.num_requests) < c.chat_fraction               # [n]
  lo, hi = math.log(c.user_prompt_min), math.log(c.user_prompt_max)
  user_lens = np.exp(rng.uniform(lo, hi, size=c.num_requests))         # [n]
  spread = rng.uniform(-c.output_spread, c.output_spread, size=c.num_requests)
  tenants = rng.integers(0, c.num_tenants, size=c.num_requests)
  systems = rng.integers(0, c.num_system_prompts, size=c.num_requests)
  seeds = rng.integers(0, 2 ** 31, size=c.num_requests)
  sys_len = int(round(c.system_prompt_len * c.scale))
  out = []
  for i in range(c.num_requests):
    product = "chat" if is_chat[i] else "report"
    base = c.chat_output_len if is_chat[i] else c.report_output_len
    tenant = f"t{int(tenants[i])}"
    out.append(TraceRequest(
        request_id=f"r{i:05d}", arrival_time=float(arrivals[i]), product=product,
        max_tokens=_scaled(base * (1.0 + spread[i]), c.scale), tenant=tenant,
        cache_salt=tenant if c.salt_by_tenant else None, system_prompt=int(systems[i]),
        system_prompt_len=sys_len, user_prompt_len=_scaled(user_lens[i], c.scale),
        seed=int(seeds[i])))
  return out


_FIELDS = {f.name for f in dataclasses.fields(TraceRequest)}


def to_json(request: TraceRequest) -> dict:
  d = dataclasses.asdict(request)
  if d["token_ids"] is None:
    del d["token_ids"]
  else:
    d["token_ids"] = list(d["token_ids"])
  return d


def from_json(d: dict, line: int = 0) -> TraceRequest:
  unknown = sorted(set(d) - _FIELDS)
  if unknown:
    raise ValueError(f"trace line {line}: unknown field(s) {unknown}")
  try:
    return TraceRequest(**d)
  except TypeError as e:
    raise ValueError(f"trace line {line}: {e}") from None


def write_trace(path: str | os.PathLike, requests: Iterable[TraceRequest]) -> None:
  """Writes one JSON object per line."""
  with open(path, "w", encoding="utf-8") as f:
    for r in requests:
      f.write(json.dumps(to_json(r), sort_keys=True) + "\n")


def read_trace(path: str | os.PathLike) -> list[TraceRequest]:
  """Reads a JSONL trace, sorted by arrival time; raises ValueError on bad lines."""
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"trace line {i}: not JSON: {e}") from None
      out.append(from_json(d, i))
  ids = [r.request_id for r in out]
  if len(set(ids)) != len(ids):
    raise ValueError("trace has duplicate request ids")
  return sorted(out, key=lambda r: r.arrival_time)


def summarize(requests: Sequence[TraceRequest]) -> dict:
  """Counts and mean lengths per product (for logs and docs)."""
  out = {}
  for p in PRODUCTS:
    rs = [r for r in requests if r.product == p]
    if rs:
      out[p] = {"count": len(rs), "mean_prompt": float(np.mean([r.prompt_len for r in rs])),
                "mean_max_tokens": float(np.mean([r.max_tokens for r in rs]))}
  return out
