"""A `ParsedRequest` -> the engine's prompt token ids and `SamplingParams`.

NOTE: the rules live in `serving.request_convert` (shared with gRPC) and in
`LLMEngine.add_request`; this module only adapts the HTTP forms to them.
"""
from __future__ import annotations

import re

from engine.context_limit import ContextLimit
from engine.sampling_params import SamplingParams
from serving import auth, limits
from serving import request_convert as rc
from serving.http.errors import bad_request
from serving.http.protocol import ParsedRequest

_PARAM = re.compile(r"^[A-Za-z_][\w.\[\]]*")


def _param_of(message: str) -> str | None:
  """The field a `request_convert` message starts with (its messages name it first)."""
  m = _PARAM.match(message)
  return m.group(0) if m else None


def prompt_token_ids(tokenizer, req: ParsedRequest, limit: ContextLimit) -> list[int]:
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
      return rc.prompt_token_ids(tokenizer, "", req.messages, limit, field="messages")
    return rc.prompt_token_ids(tokenizer, req.prompt, (), limit, field="prompt")
  except rc.PromptTooLongError as e:
    raise bad_request(str(e), param=field, code="context_length_exceeded") from None
  except rc.InvalidRequestError as e:
    raise bad_request(str(e), param=_param_of(str(e)) or field) from None


def check_bounds(req: ParsedRequest, max_prompt_bytes: int) -> None:
  """The size bounds every request field has (`serving/limits.py`, shared with gRPC)."""
  try:
    limits.check_fields(limits.RequestLimits(), max_prompt_bytes,
                        cache_salt=req.cache_salt or "", stop=req.sampling.get("stop", ()),
                        stop_token_ids=req.sampling.get("stop_token_ids", ()),
                        prompt=req.prompt or "", messages=req.messages, sampling_prefix="")
  except rc.InvalidRequestError as e:
    raise bad_request(str(e), param=_param_of(str(e))) from None


def cache_salt(tenant: str | None, req: ParsedRequest, policy: str) -> str | None:
  """The request's prefix-cache salt (`serving/auth.py`'s rule, shared with gRPC)."""
  try:
    return auth.cache_salt(tenant, req.cache_salt or "", policy)
  except rc.InvalidRequestError as e:
    raise bad_request(str(e), param="cache_salt") from None


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
