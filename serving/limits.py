"""Bounds on every client-controlled size of a request, checked before any work.

A request that passes these checks costs the server a bounded amount of work
and memory: no field can be large enough to amplify the response (the request
id is echoed once per stream), to make the engine check thousands of stop
strings per token, or to keep the tokenizer busy for seconds. The prompt bound
comes from the context: a text of more than `max_model_len x max_token_bytes`
bytes cannot fit in `max_model_len` tokens, so it is refused before it is
tokenized.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.request_convert import InvalidRequestError

# NOTE: also the gRPC server's receive limit (grpc.max_receive_message_length),
# which is gRPC's own default: a larger message never reaches a handler.
MAX_MESSAGE_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class RequestLimits:
  """The bounds (docs/serving.md, "Limits"); strings are counted in characters."""
  max_request_id_chars: int = 256
  max_cache_salt_chars: int = 256
  max_stop_strings: int = 16
  max_stop_string_chars: int = 256
  max_stop_token_ids: int = 256
  max_messages: int = 1024
  max_message_bytes: int = MAX_MESSAGE_BYTES

  def max_prompt_bytes(self, max_model_len: int, max_token_bytes: int) -> int:
    """The longest prompt (UTF-8 bytes) that could still fit `max_model_len` tokens."""
    return min(self.max_message_bytes, max_model_len * max_token_bytes)


def _check_chars(field: str, value: str, limit: int) -> None:
  if len(value) > limit:
    raise InvalidRequestError(
        f"{field} is {len(value)} characters long; at most {limit} are allowed")


def _check_count(field: str, values: Sequence, limit: int, what: str) -> None:
  if len(values) > limit:
    raise InvalidRequestError(f"{field} has {len(values)} {what}; at most {limit} are allowed")


def check_text(field: str, text: str, messages: Sequence,
               limits: RequestLimits, max_prompt_bytes: int) -> None:
  """A prompt's (or chat's) size, before it is rendered or tokenized."""
  _check_count("messages", messages, limits.max_messages, "messages")
  size = len(text.encode("utf-8")) + sum(
      len(m.role.encode("utf-8")) + len(m.content.encode("utf-8")) for m in messages)
  if size > max_prompt_bytes:
    name = "messages" if messages and not text else field
    raise InvalidRequestError(
        f"{name} is {size} bytes; at most {max_prompt_bytes} bytes are allowed (more "
        "cannot fit in max_model_len tokens)")


def check_fields(limits: RequestLimits, max_prompt_bytes: int, *, request_id: str = "",
                 cache_salt: str = "", stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), prompt: str = "", messages: Sequence = (),
                 sampling_prefix: str = "sampling.") -> None:
  """Raises InvalidRequestError naming the first field over its bound (gRPC and HTTP).

  `messages` are anything with `role` and `content` strings.
  """
  _check_chars("request_id", request_id, limits.max_request_id_chars)
  _check_chars("cache_salt", cache_salt, limits.max_cache_salt_chars)
  _check_count(f"{sampling_prefix}stop", stop, limits.max_stop_strings, "strings")
  for i, s in enumerate(stop):
    _check_chars(f"{sampling_prefix}stop[{i}]", s, limits.max_stop_string_chars)
  _check_count(f"{sampling_prefix}stop_token_ids", stop_token_ids, limits.max_stop_token_ids,
               "ids")
  check_text("prompt", prompt, messages, limits, max_prompt_bytes)


def check_generate(request: pb.GenerateRequest, limits: RequestLimits,
                   max_prompt_bytes: int) -> None:
  """`check_fields` of a gRPC GenerateRequest."""
  check_fields(limits, max_prompt_bytes, request_id=request.request_id,
               cache_salt=request.cache_salt, stop=request.sampling.stop,
               stop_token_ids=request.sampling.stop_token_ids, prompt=request.prompt,
               messages=request.messages)


def check_tokenize(request: pb.TokenizeRequest, limits: RequestLimits,
                   max_prompt_bytes: int) -> None:
  check_text("text", request.text, request.messages, limits, max_prompt_bytes)
