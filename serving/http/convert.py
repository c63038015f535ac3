"""A `ParsedRequest` -> the engine's prompt token ids and `SamplingParams`.

NOTE: the rules live in `serving.request_convert` (shared with gRPC) and in
`LLMEngine.add_request`; this module only adapts the HTTP forms to them.
"""
from __future__ import annotations

import re

from engine.sampling_params import SamplingParams
from serving import request_convert as rc
from serving.http.errors import ApiError, bad_request
from serving.http.protocol import ParsedRequest

_PARAM = re.compile(r"^[A-Za-z_][\w.\[\]]*")


def _param_of(message: str) -> str | None:
  """The field a `request_convert` message starts with (its messages name it first)."""
  m = _PARAM.match(message)
  return m.group(0) if m else None


def prompt_token_ids(tokenizer, req: ParsedRequest, max_model_len: int) -> list[int]:
  """The prompt's token ids; chat turns go through the model's chat template.

  A token-id prompt is passed on as is: `LLMEngine.add_request` checks its ids
  against the vocabulary and its length against the context (a 400 then).
  """
  if req.prompt_ids is not None:
    return list(req.prompt_ids)
  field = "messages" if req.chat else "prompt"
  if tokenizer is None:
    raise bad_request(f"this model has no tokenizer: send the prompt as token ids "
                      f"(/v1/completions with a list of ints)", param=field)
  try:
    if req.chat:
      return rc.prompt_token_ids(tokenizer, "", req.messages, max_model_len, field="messages")
    return rc.prompt_token_ids(tokenizer, req.prompt, (), max_model_len, field="prompt")
  except rc.InvalidRequestError as e:
    raise _too_long_or_bad(str(e), field) from None


def _too_long_or_bad(message: str, field: str) -> ApiError:
  if "too long" in message:
    return bad_request(message, param=field, code="context_length_exceeded")
  return bad_request(message, param=_param_of(message) or field)


def sampling_params(req: ParsedRequest, num_prompt_tokens: int,
                    max_model_len: int) -> SamplingParams:
  """The request's sampling; chat without max_tokens may use the whole context (OpenAI)."""
  kwargs = dict(req.sampling, logprobs=req.logprobs)
  if "max_tokens" not in kwargs and req.chat:
    kwargs["max_tokens"] = max(1, max_model_len - num_prompt_tokens)
  try:
    return rc.checked_sampling_params(kwargs)
  except ValueError as e:
    raise bad_request(str(e), param=_param_of(str(e))) from None
