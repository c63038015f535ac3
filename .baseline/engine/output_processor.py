"""Turns sampled tokens into text deltas: detokenization, stop conditions, usage.

NOTE: text that might be the start of a stop string is held back until it is
known not to be one, so streamed text never contains any part of a stop string.
"""
from __future__ import annotations

import time

from engine.outputs import FinishReason, TokenDelta, Usage
from engine.request import Request
from models.tokenizer import IncrementalDetokenizer


class RequestTextState:
  """Per-request detokenizer plus the stop-string hold-back buffer."""

  def __init__(self, request: Request, tokenizer):
    self.request = request
    self.detok = IncrementalDetokenizer(tokenizer) if tokenizer is not None else None
    self.text = ""          # all visible text so far (stop string excluded)
    self.emitted = 0        # characters of `text` already handed out
    self.stopped = False

  def push(self, token_ids: list[int]) -> None:
    """Adds generated (non-EOS) tokens; sets `stopped` if a stop string appeared."""
    if self.detok is None or self.stopped or not token_ids:
      return
    new_text = self.detok.push(token_ids)
    stops = self.request.sampling_params.stop
    # NOTE: only a stop string ending in the new text can be new: search from
    # len(longest stop) - 1 characters before it, not the whole text each token.
    start = max(0, len(self.text) - max((len(x) for x in stops), default=1) + 1)
    self.text += new_text
    if not stops:
      return
    hits = [i for i in (self.text.find(x, start) for x in stops) if i >= 0]
    if hits:
      self.text = self.text[:min(hits)]
      self.stopped = True

  def take(self, final: bool) -> str:
    """Text that is safe to hand out now."""
    end = len(self.text)
    if not final and self.request.sampling_params.stop:
      end = max(self.emitted, end - _held_back(self.text, self.request.sampling_params.stop))
    delta = self.text[self.emitted:end]
    self.emitted = end
    return delta


def _held_back(text: str, stops) -> int:
  """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
  best = 0
  for s in stops:
    for k in range(min(len(s) - 1, len(text)), best, -1):
      if text.endswith(s[:k]):
        best = k
        break
  return best


def _stop_token_ids(request: Request) -> set[int]:
  params = request.sampling_params
  stops = set(params.stop_token_ids)
  if not params.ignore_eos:
    stops.update(request.eos_token_ids)
  return stops


def accepted(request: Request, token_ids: list[int],
             max_model_len: int) -> tuple[int, FinishReason | None]:
  """How many of `token_ids` (sampled in this order, not yet appended) the request
  keeps, and why it stops if it does: at the first stop token (EOS unless
  ignore_eos, or a stop_token_id) or when it reaches max_tokens or the context.

  NOTE: stop strings are not checked here (they need the text, token by token).
  """
  params = request.sampling_params
  limit = max(1, min(params.max_tokens - request.num_output_tokens,
                     max_model_len - request.num_tokens))
  stops = _stop_token_ids(request)
  for i, token in enumerate(token_ids[:limit]):
    if token in stops:
      return i + 1, FinishReason.STOP
  if len(token_ids) >= limit:
    return limit, FinishReason.LENGTH
  return len(token_ids), None


def is_stop_token(request: Request, token_id: int) -> bool:
  return token_id in _stop_token_ids(request)


def usage_of(request: Request) -> Usage:
  ttft = None
  if request.first_token_time is not None:
    ttft = request.first_token_time - request.arrival_time
  return Usage(prompt_tokens=request.num_prompt_tokens,
               cached_prompt_tokens=request.num_cached_prompt_tokens,
               completion_tokens=request.num_output_tokens,
               time_to_first_token_s=ttft)


def make_delta(state: RequestTextState, token_ids: list[int], logprobs: list[float] | None,
               reason: FinishReason | None, error: str | None = None) -> TokenDelta:
  request = state.request
  finished = reason is not None
  if request.first_token_time is None and token_ids:
    request.first_token_time = time.monotonic()
  return TokenDelta(request_id=request.request_id, token_ids=token_ids,
                    text=state.take(final=finished), logprobs=logprobs, finished=finished,
                    finish_reason=reason, usage=usage_of(request) if finished else None,
                    error=error)
