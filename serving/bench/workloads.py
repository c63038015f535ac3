"""What a benchmark sends: `BenchRequest`s with arrival times.

The incident workload is `research.workload`'s generator, its
prompts materialized as token ids for a vocabulary of `vocab_size` tokens
(ids 1..vocab_size-1), so one run means the same traffic on any model whose
vocabulary is at least that large.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research import workload as wl

DEFAULT_VOCAB_SIZE = 32000   # NOTE: valid ids for Llama-2/3, Mistral, Qwen, SmolLM2 alike


@dataclasses.dataclass(frozen=True)
class BenchRequest:
  """One request: a token-id prompt, an output length and when to send it."""
  request_id: str
  arrival_s: float                 # seconds after the start of the run
  prompt_ids: tuple[int, ...]
  max_tokens: int
  ignore_eos: bool = True          # so the output is max_tokens long, as planned

  def __post_init__(self):
    if not self.prompt_ids:
      raise ValueError(f"{self.request_id}: empty prompt")
    if self.max_tokens < 1:
      raise ValueError(f"{self.request_id}: max_tokens must be >= 1")


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
  """n arrival times of a Poisson process at `rate` per second (the first at 0);
  rate inf sends everything at once."""
  if rate == float("inf"):
    return [0.0] * n
  if not rate > 0:
    raise ValueError(f"rate must be > 0, got {rate}")
  gaps = np.random.default_rng([seed, 0x4152]).exponential(1.0 / rate, size=n)   # [n]
  return [float(t) for t in np.cumsum(gaps) - gaps[0]]


def _from_trace(t: wl.TraceRequest, vocab_size: int) -> BenchRequest:
  return BenchRequest(t.request_id, t.arrival_time, tuple(t.prompt_token_ids(vocab_size)),
                      t.max_tokens, t.ignore_eos)


def incident(num_requests: int, rate: float, seed: int, scale: float,
             vocab_size: int) -> list[BenchRequest]:
  """The incident's chat + report traffic, Poisson arrivals at `rate` (inf: all at 0)."""
  trace = wl.generate(wl.WorkloadConfig(num_requests=num_requests, rate=rate, scale=scale,
                                        seed=seed))
  return [_from_trace(t, vocab_size) for t in trace]


def fixed(num_requests: int, input_len: int, output_len: int, rate: float, seed: int,
          vocab_size: int) -> list[BenchRequest]:
  """`input_len` random token ids in, `output_len` tokens out, every request."""
  if input_len < 1 or output_len < 1:
    raise ValueError("input_len and output_len must be >= 1")
  rng = np.random.default_rng([seed, 0x4658])
  ids = rng.integers(1, vocab_size, size=(num_requests, input_len))   # [n, input_len]
  times = poisson_arrivals(num_requests, rate, seed)
  return [BenchRequest(f"f{i:05d}", times[i], tuple(int(t) for t in ids[i]), output_len)
          for i in range(num_requests)]


def from_trace_file(path: str, num_requests: int | None, rate: float | None, seed: int,
                    vocab_size: int) -> list[BenchRequest]:
  """A JSONL trace (`research.workload` format), its own arrivals unless
  `rate` is given (then Poisson at that rate)."""
  trace = wl.read_trace(path)[:num_requests]
  out = [_from_trace(t, vocab_size) for t in trace]
  if rate is None:
    return out
  return with_arrivals(out, poisson_arrivals(len(out), rate, seed))


def with_arrivals(requests: list[BenchRequest], times: list[float]) -> list[BenchRequest]:
  return [dataclasses.replace(r, arrival_s=t) for r, t in zip(requests, times)]
