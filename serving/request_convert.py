"""Turns `pagedjax.v1` requests into engine inputs, validating every field.

Every problem raises `InvalidRequestError` whose message names the offending
field, so the servicer can answer `INVALID_ARGUMENT` with it verbatim.
"""
from __future__ import annotations

from typing import Any, Sequence

from engine.context_limit import ContextLimit, check_prompt
from engine.outputs import FinishReason, Usage
from engine.prompts import encode_prompt
from engine.sampling_params import SamplingParams
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb

CHAT_ROLES = ("system", "user", "assistant")
_OPTIONAL_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens")
FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


class InvalidRequestError(ValueError):
  """A client request is malformed; the message names the field."""


class PromptTooLongError(InvalidRequestError):
  """The prompt leaves no room in max_model_len for one generated token."""


def sampling_params_from_proto(msg: pb.SamplingParams) -> SamplingParams:
  """Unset optional fields keep `SamplingParams`' defaults."""
  kwargs: dict[str, Any] = {f: getattr(msg, f) for f in _OPTIONAL_SAMPLING if msg.HasField(f)}
  kwargs.update(stop=tuple(msg.stop), stop_token_ids=tuple(msg.stop_token_ids),
                ignore_eos=msg.ignore_eos, logprobs=msg.logprobs)
  try:
    return checked_sampling_params(kwargs)
  except ValueError as e:
    # NOTE: the messages start with the field name.
    raise InvalidRequestError(f"sampling.{e}") from None


def checked_sampling_params(kwargs: dict[str, Any]) -> SamplingParams:
  """`SamplingParams(**kwargs)` plus the checks the engine's step relies on.

  NOTE: a value that passes here must never make `engine.step()` raise, since
  a failed step fails every request in the batch, not just the bad one.
  """
  seed = kwargs.get("seed")
  if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  ids = kwargs.get("stop_token_ids") or ()
  if any(isinstance(t, int) and t < 0 for t in ids):
    raise ValueError(f"stop_token_ids must be non-negative, got {list(ids)}")
  return SamplingParams(**kwargs)


def validate_chat(messages: Sequence[dict[str, str]]) -> None:
  """Checks every role is known and that some content is there."""
  for i, m in enumerate(messages):
    if m["role"] not in CHAT_ROLES:
      raise InvalidRequestError(
          f"messages[{i}].role: unknown chat role {m['role'][:32]!r} "
          f"(expected one of {', '.join(CHAT_ROLES)})")
  if all(not m["content"] for m in messages):
    raise InvalidRequestError("messages: every message content is empty")


def chat_messages(messages: Sequence[pb.ChatMessage]) -> list[dict[str, str]]:
  """Validated proto chat turns, as dicts for the chat template."""
  out = [{"role": m.role, "content": m.content} for m in messages]
  validate_chat(out)
  return out


def prompt_token_ids(tokenizer, prompt: str, messages: Sequence[pb.ChatMessage],
                     limit: ContextLimit | None, field: str = "prompt") -> list[int]:
  """Tokenizes a raw prompt or chat messages and checks the length.

  Raises InvalidRequestError for: both or neither set, an unknown chat role, an
  empty prompt, a prompt that leaves no room for one generated token (the
  length check is skipped when `limit` is None).
  """
  if prompt and messages:
    raise InvalidRequestError(f"set exactly one of {field} and messages, not both")
  if tokenizer is None:
    raise InvalidRequestError(f"{field}: this model has no tokenizer")
  if messages:
    try:
      ids = encode_prompt(tokenizer, messages=chat_messages(messages))
    except InvalidRequestError:
      raise
    except ValueError as e:  # e.g. the model has no chat template
      raise InvalidRequestError(f"messages: {e}") from None
  elif prompt:
    ids = encode_prompt(tokenizer, prompt)
  else:
    raise InvalidRequestError(f"{field} is empty: set {field} or messages")
  if not ids:
    raise InvalidRequestError(f"{field} is empty after tokenization")
  if limit is not None:
    try:
      check_prompt(len(ids), limit, field)
    except ValueError as e:
      raise PromptTooLongError(str(e)) from None
  return ids


def usage_to_proto(usage: Usage | None, ttft_s: float | None) -> pb.Usage:
  """The proto usage; `ttft_s` is the server-side time to first token."""
  if usage is None:
    return pb.Usage(time_to_first_token_s=ttft_s or 0.0)
  return pb.Usage(prompt_tokens=usage.prompt_tokens,
                  cached_prompt_tokens=usage.cached_prompt_tokens,
                  completion_tokens=usage.completion_tokens,
                  time_to_first_token_s=ttft_s if ttft_s is not None else
                  (usage.time_to_first_token_s or 0.0))
