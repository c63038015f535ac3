"""Turns `pagedjax.v1` requests into engine inputs, validating every field.

Every problem raises `InvalidRequestError` whose message names the offending
field, so the servicer can answer `INVALID_ARGUMENT` with it verbatim.
"""
from __future__ import annotations

from typing import Any, Sequence

from engine.outputs import FinishReason, Usage
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
          f"messages[{i}].role: unknown chat role {m['role']!r} "
          f"(expected one of {', '.join(CHAT_ROLES)})")
  if all(not m["content"] for m in messages):
    raise InvalidRequestError("messages: every message content is empty")


def chat_messages(messages: Sequence[pb.ChatMessage]) -> list[dict[str, str]]:
  """Validated proto chat turns, as dicts for the chat template."""
  out = [{"role": m.role, "content": m.content} for m in messages]
  validate_chat(out)
  return out


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
  """Renders chat turns with the model's template (plus the assistant cue)."""
  rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  # NOTE: the template already holds any BOS text; do not add special tokens twice.
  return list(tokenizer.encode(rendered, add_special_tokens=False))


def prompt_token_ids(tokenizer, prompt: str, messages: Sequence[pb.ChatMessage],
                     max_model_len: int | None, field: str = "prompt") -> list[int]:
  """Tokenizes a raw prompt or chat messages and checks the length.

  Raises InvalidRequestError for: both or neither set, an unknown chat role, an
  empty prompt, a prompt that leaves no room for one generated token (the
  length check is skipped when `max_model_len` is None).
  """
  if prompt and messages:
    raise InvalidRequestError(f"set exactly one of {field} and messages, not both")
  if messages:
    try:
      ids = encode_chat(tokenizer, chat_messages(messages))
    except InvalidRequestError:
      raise
    except ValueError as e:  # e.g. the model has no chat template
      raise InvalidRequestError(f"messages: {e}") from None
  elif prompt:
    ids = list(tokenizer.encode(prompt))
  else:
    raise InvalidRequestError(f"{field} is empty: set {field} or messages")
  if not ids:
    raise InvalidRequestError(f"{field} is empty after tokenization")
  if max_model_len is not None and len(ids) + 1 > max_model_len:
    raise InvalidRequestError(
        f"{field} is {len(ids)} tokens, too long for the model's context of "
        f"{max_model_len} tokens (it must leave room for at least one generated token)")
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
