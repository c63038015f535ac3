"""Errors of the HTTP API in OpenAI's JSON shape, with their HTTP status.

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""
from __future__ import annotations

import dataclasses
import json

from serving.engine_loop import RejectKind


@dataclasses.dataclass(frozen=True)
class ApiError(Exception):
  """A request the API refuses; `status` is the HTTP status of the answer."""
  status: int
  message: str
  type: str = "invalid_request_error"
  param: str | None = None
  code: str | None = None

  def __str__(self) -> str:
    return self.message

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}

  def json_bytes(self) -> bytes:
    return json.dumps(self.body()).encode()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
  return ApiError(400, message, param=param, code=code)


def unauthorized(message: str = "invalid or missing API key") -> ApiError:
  return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def model_not_found(name: object, served: str) -> ApiError:
  return ApiError(404, f"the model {name!r} does not exist; this server serves {served!r}",
                  param="model", code="model_not_found")


def queue_full(message: str) -> ApiError:
  # NOTE: 429 (retry later), as gRPC's RESOURCE_EXHAUSTED maps to 429.
  return ApiError(429, message, type="rate_limit_error", code="queue_full")


def unavailable(message: str) -> ApiError:
  return ApiError(503, message, type="server_error", code="unavailable")


def kv_cache_too_small(message: str) -> ApiError:
  """The engine can never schedule the prompt: it needs more KV blocks than exist."""
  return ApiError(413, message, param="prompt", code="prompt_too_large_for_kv_cache")


def from_reject(kind: RejectKind, message: str) -> ApiError:
  """The API error of an engine-loop rejection."""
  if kind == RejectKind.INVALID_ARGUMENT:
    return bad_request(message)
  if kind == RejectKind.UNAVAILABLE:
    return unavailable(message)
  return ApiError(500, message, type="server_error", code="internal_error")


def from_http_status(status: int, reason: str) -> ApiError:
  """aiohttp's own refusals (unknown path, wrong method, body too large)."""
  codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
  return ApiError(status, reason, code=codes.get(status))
