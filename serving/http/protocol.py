"""OpenAI request bodies -> a validated `ParsedRequest`.

Only the shape of the body is checked here (types, which fields exist, what is
not supported). The sampling values themselves go through the gRPC API's own
`request_convert.checked_sampling_params`, and prompts through
`request_convert.prompt_token_ids`, so both APIs accept exactly the same values.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from serving.http.errors import bad_request
from serving.http.fields import Fields

# Fields of both endpoints: OpenAI's, plus vLLM-style extensions (top_k, min_p,
# ignore_eos, stop_token_ids, cache_salt, priority).
_COMMON = {
    "model": "str", "stream": "bool", "stream_options": "object", "max_tokens": "int32",
    "temperature": "number", "top_p": "number", "top_k": "int32", "min_p": "number",
    "seed": "int64", "stop": "stop", "n": "int32", "user": "str",
    "presence_penalty": "number", "frequency_penalty": "number", "logit_bias": "object",
    "ignore_eos": "bool", "stop_token_ids": "int32_list", "cache_salt": "str",
    "priority": "int32",
}
COMPLETION_FIELDS = {**_COMMON, "prompt": "any", "logprobs": "int32", "echo": "bool",
                     "best_of": "int32", "suffix": "str"}
CHAT_FIELDS = {**_COMMON, "messages": "any", "logprobs": "bool", "top_logprobs": "int32",
               "max_completion_tokens": "int32", "response_format": "object",
               "tools": "any", "tool_choice": "any", "parallel_tool_calls": "bool"}
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "ignore_eos",
             "stop_token_ids")


@dataclasses.dataclass(frozen=True)
class ChatTurn:
  """One chat message, in the attribute form `request_convert.prompt_token_ids` reads."""
  role: str
  content: str


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
  """A checked request of either endpoint. Exactly one prompt form is set."""
  chat: bool
  model: str | None
  prompt: str | None = None                    # completions: a text prompt
  prompt_ids: tuple[int, ...] | None = None    # completions: a token-id prompt
  messages: tuple[ChatTurn, ...] = ()          # chat: the turns
  sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # max_tokens if given
  stream: bool = False
  include_usage: bool = False
  logprobs: bool = False
  cache_salt: str | None = None
  priority: int = 0


def parse_completion(body: Any) -> ParsedRequest:
  f = Fields(body, COMPLETION_FIELDS)
  f.require_default("echo", False, "the prompt is never echoed")
  f.require_default("best_of", 1, "one completion is generated per request")
  f.require_default("suffix", "", "insertion (suffix) is not supported")
  logprobs = f.get("logprobs")
  if logprobs is not None and logprobs != 0:
    raise bad_request("logprobs must be 0 or null: only the sampled token's log-probability "
                      "is available, not the top alternatives", param="logprobs")
  prompt, ids = _completion_prompt(f.get("prompt"))
  return ParsedRequest(chat=False, prompt=prompt, prompt_ids=ids,
                       logprobs=logprobs is not None, **_common(f))


def parse_chat(body: Any) -> ParsedRequest:
  f = Fields(body, CHAT_FIELDS)
  f.require_default("top_logprobs", 0, "only the sampled token's log-probability is "
                    "available, not the top alternatives")
  for name in ("tools", "tool_choice"):
    if f.has(name):
      raise bad_request(f"{name} is not supported (no tool calling)", param=name)
  fmt = f.get("response_format")
  if fmt is not None and fmt != {"type": "text"}:
    raise bad_request("response_format must be {\"type\": \"text\"} (no JSON mode)",
                      param="response_format")
  common = _common(f)
  if f.has("max_completion_tokens"):
    if f.has("max_tokens") and f.get("max_tokens") != f.get("max_completion_tokens"):
      raise bad_request("set max_completion_tokens or max_tokens, not both",
                        param="max_completion_tokens")
    common["sampling"]["max_tokens"] = f.get("max_completion_tokens")
  return ParsedRequest(chat=True, messages=_chat_turns(f.get("messages")),
                       logprobs=bool(f.get("logprobs", False)), **common)


def _common(f: Fields) -> dict[str, Any]:
  f.require_default("n", 1, "one completion per request: send n requests instead")
  f.require_default("presence_penalty", 0.0, "penalties are not implemented")
  f.require_default("frequency_penalty", 0.0, "penalties are not implemented")
  f.require_default("logit_bias", {}, "logit_bias is not implemented")
  stream = bool(f.get("stream", False))
  options = f.get("stream_options")
  if options is not None and not stream:
    raise bad_request("stream_options is only allowed with stream=true",
                      param="stream_options")
  include_usage = _include_usage(options or {})
  sampling = {k: f.get(k) for k in _SAMPLING if f.has(k)}
  if f.has("max_tokens"):
    sampling["max_tokens"] = f.get("max_tokens")
  return dict(model=f.get("model"), sampling=sampling, stream=stream,
              include_usage=include_usage, cache_salt=f.get("cache_salt") or None,
              priority=f.get("priority", 0))


def _include_usage(options: dict) -> bool:
  unknown = sorted(set(options) - {"include_usage"})
  if unknown:
    raise bad_request(f"unrecognized stream_options field(s): {', '.join(unknown)}",
                      param="stream_options")
  value = options.get("include_usage", False)
  if not isinstance(value, bool):
    raise bad_request("stream_options.include_usage must be a boolean",
                      param="stream_options")
  return value


def _completion_prompt(prompt: Any) -> tuple[str | None, tuple[int, ...] | None]:
  """A text or token-id prompt; OpenAI's batch forms only with one prompt."""
  if prompt is None:
    raise bad_request("prompt is required", param="prompt")
  if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
    if len(prompt) != 1:
      raise bad_request(f"prompt holds {len(prompt)} prompts; send one prompt per request",
                        param="prompt")
    prompt = prompt[0]
  if isinstance(prompt, str):
    return prompt, None
  if isinstance(prompt, list) and prompt and all(
      isinstance(t, int) and not isinstance(t, bool) for t in prompt):
    return None, tuple(prompt)
  raise bad_request("prompt must be a string, a non-empty list of token ids, or a list "
                    "holding one of those", param="prompt")


def _chat_turns(messages: Any) -> tuple[ChatTurn, ...]:
  if not isinstance(messages, list) or not messages:
    raise bad_request("messages must be a non-empty list of messages", param="messages")
  return tuple(_chat_turn(i, m) for i, m in enumerate(messages))


def _chat_turn(i: int, m: Any) -> ChatTurn:
  where = f"messages[{i}]"
  if not isinstance(m, dict):
    raise bad_request(f"{where} must be an object", param=where)
  unknown = sorted(set(m) - {"role", "content", "name"})
  if unknown:
    raise bad_request(f"{where}: unsupported field(s) {', '.join(unknown)}", param=where)
  role = m.get("role")
  if not isinstance(role, str):
    raise bad_request(f"{where}.role must be a string", param=f"{where}.role")
  return ChatTurn(role, _content(where, m.get("content")))


def _content(where: str, content: Any) -> str:
  """A message's text: a string, null, or a list of text parts (joined)."""
  if content is None or isinstance(content, str):
    return content or ""
  if isinstance(content, list):
    parts = []
    for j, part in enumerate(content):
      if not (isinstance(part, dict) and part.get("type") == "text"
              and isinstance(part.get("text"), str)):
        raise bad_request(f"{where}.content[{j}]: only text parts are supported",
                          param=f"{where}.content")
      parts.append(part["text"])
    return "".join(parts)
  raise bad_request(f"{where}.content must be a string or a list of text parts",
                    param=f"{where}.content")
