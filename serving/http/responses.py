"""Response bodies and stream chunks of `/v1/completions` and `/v1/chat/completions`.

One stream chunk per engine delta (a delta is one engine step's tokens of the
request); the chunk of the last delta carries the finish reason. With
`stream_options.include_usage`, every chunk has `"usage": null` and one more
chunk with no choices carries the usage (OpenAI's convention).
"""
from __future__ import annotations

from typing import Callable

from engine.outputs import FinishReason, OutputAccumulator, TokenDelta, Usage
from serving.http.protocol import ParsedRequest

FINISH_REASONS = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def usage_body(u: Usage) -> dict:
  return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
          "total_tokens": u.prompt_tokens + u.completion_tokens,
          "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}


def token_text_fn(tokenizer) -> Callable[[int], str]:
  """The text of one token, for logprobs (`token_id:N` when there is no tokenizer)."""
  if tokenizer is None:
    return lambda t: f"token_id:{t}"
  return lambda t: tokenizer.decode([t], skip_special_tokens=False)


class Shaper:
  """Builds the bodies of one request, completion or chat alike."""

  def __init__(self, req: ParsedRequest, model: str, response_id: str, created: int,
               token_text: Callable[[int], str]):
    self._req = req
    self._model = model
    self._id = response_id
    self._created = created
    self._token_text = token_text

  def _envelope(self, obj: str, choices: list) -> dict:
    return {"id": self._id, "object": obj, "created": self._created, "model": self._model,
            "choices": choices}

  def _logprobs(self, token_ids: list[int], logprobs: list[float] | None) -> dict | None:
    if not self._req.logprobs:
      return None
    texts = [self._token_text(t) for t in token_ids]
    lps = list(logprobs or ())
    if self._req.chat:
      return {"content": [{"token": s, "logprob": lp, "bytes": list(s.encode()),
                           "top_logprobs": []} for s, lp in zip(texts, lps)]}
    return {"tokens": texts, "token_logprobs": lps, "top_logprobs": None, "text_offset": None}

  # --- streaming ----------------------------------------------------------------

  def _chunk(self, choice: dict) -> dict:
    obj = "chat.completion.chunk" if self._req.chat else "text_completion"
    body = self._envelope(obj, [choice])
    if self._req.include_usage:
      body["usage"] = None
    return body

  def role_chunk(self) -> dict | None:
    """Chat streams open with the assistant role (and no content)."""
    if not self._req.chat:
      return None
    return self._chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                        "logprobs": None, "finish_reason": None})

  def delta_chunk(self, d: TokenDelta) -> dict:
    finish = FINISH_REASONS.get(d.finish_reason) if d.finished else None
    logprobs = self._logprobs(d.token_ids, d.logprobs)
    if self._req.chat:
      choice = {"index": 0, "delta": {"content": d.text}, "logprobs": logprobs,
                "finish_reason": finish}
    else:
      choice = {"index": 0, "text": d.text, "logprobs": logprobs, "finish_reason": finish}
    return self._chunk(choice)

  def usage_chunk(self, usage: Usage) -> dict | None:
    if not self._req.include_usage:
      return None
    obj = "chat.completion.chunk" if self._req.chat else "text_completion"
    return {**self._envelope(obj, []), "usage": usage_body(usage)}

  # --- unary --------------------------------------------------------------------

  def whole(self, deltas: list[TokenDelta]) -> dict:
    """The unary body of a finished request (its deltas, the last one final)."""
    joined = OutputAccumulator(deltas)
    last, text = joined.last, joined.text
    choice = {"index": 0, "logprobs": self._logprobs(joined.token_ids, joined.logprobs),
              "finish_reason": FINISH_REASONS.get(last.finish_reason)}
    if self._req.chat:
      choice["message"] = {"role": "assistant", "content": text}
      body = self._envelope("chat.completion", [choice])
    else:
      choice["text"] = text
      body = self._envelope("text_completion", [choice])
    body["usage"] = usage_body(last.usage or Usage())
    return body
