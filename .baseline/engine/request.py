"""A request's host-side state, shared by the scheduler and the KV cache managers."""
from __future__ import annotations

import dataclasses
import enum
import time

from engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
  WAITING = "waiting"        # not yet admitted, or preempted and requeued
  RUNNING = "running"        # holds KV blocks; prefilling or decoding
  FINISHED = "finished"


@dataclasses.dataclass(eq=False)
class Request:
  """One generation request.

  NOTE: `all_token_ids` is prompt + every token generated so far. Preemption
  frees the blocks and resets `num_computed_tokens` to 0 but keeps
  `output_token_ids`, so the request recomputes prompt + outputs and goes on
  where it stopped: no token is lost or produced twice.
  """
  request_id: str
  prompt_token_ids: list[int]
  sampling_params: SamplingParams
  eos_token_ids: tuple[int, ...] = ()
  cache_salt: str | None = None
  priority: int = 0                      # lower value = more important (vLLM convention)
  seed: int = 0                          # sampling seed (the engine draws one when the caller gives none)
  arrival_time: float = dataclasses.field(default_factory=time.monotonic)
  prompt: str | None = None

  output_token_ids: list[int] = dataclasses.field(default_factory=list)
  output_logprobs: list[float] = dataclasses.field(default_factory=list)
  num_computed_tokens: int = 0           # tokens whose K/V are in the cache
  # NOTE: 1 while the token sampled by the step in flight is still on the
  # device: it counts towards the request's length but is not in
  # output_token_ids yet. Only a decode row can consume it (from the device).
  num_pending_tokens: int = 0
  num_cached_prompt_tokens: int = 0      # of those, served from the prefix cache at admission
  status: RequestStatus = RequestStatus.WAITING
  num_preemptions: int = 0
  first_token_time: float | None = None
  finish_reason: object | None = None    # engine.outputs.FinishReason once finished

  @property
  def num_prompt_tokens(self) -> int:
    return len(self.prompt_token_ids)

  @property
  def num_output_tokens(self) -> int:
    return len(self.output_token_ids)

  @property
  def num_tokens(self) -> int:
    return len(self.prompt_token_ids) + len(self.output_token_ids)

  @property
  def num_tokens_with_pending(self) -> int:
    return self.num_tokens + self.num_pending_tokens

  def token_at(self, index: int) -> int:
    """Token `index` of prompt + outputs, without building the joined list."""
    n = len(self.prompt_token_ids)
    return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

  @property
  def all_token_ids(self) -> list[int]:
    return self.prompt_token_ids + self.output_token_ids

  @property
  def max_total_tokens(self) -> int:
    """Prompt plus the most tokens this request may ever generate."""
    return self.num_prompt_tokens + self.sampling_params.max_tokens

  @property
  def is_finished(self) -> bool:
    return self.status == RequestStatus.FINISHED
