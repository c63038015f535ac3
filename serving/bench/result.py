"""What one benchmark request measured (client-side, `time.perf_counter` seconds)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RequestResult:
  """Times of one request: sent at `start`, a chunk of tokens at each `chunk_times`.

  NOTE: a chunk is what the server flushed at once (one SSE event, one gRPC
  message); a server may pack several tokens in one, so ITL is per chunk, as in
  vLLM's `bench serve`.
  """
  request_id: str
  start: float = 0.0
  end: float = 0.0
  chunk_times: list[float] = dataclasses.field(default_factory=list)
  prompt_tokens: int | None = None      # as the server reported them (usage)
  output_tokens: int | None = None      # usage; else the number of chunks
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None and bool(self.chunk_times)

  @property
  def ttft(self) -> float:
    return self.chunk_times[0] - self.start

  @property
  def latency(self) -> float:
    return self.end - self.start

  @property
  def tpot(self) -> float | None:
    """Mean time per output token after the first (None for one-token outputs)."""
    n = self.output_tokens or len(self.chunk_times)
    return (self.end - self.chunk_times[0]) / (n - 1) if n > 1 else None

  @property
  def itls(self) -> list[float]:
    return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]
