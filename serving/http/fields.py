"""Typed reading of JSON request fields; every problem names its field.

NOTE: JSON `null` means "not set" for every optional field (OpenAI's clients
send it that way), so `get` returns None for absent and null fields alike.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from serving.http.errors import bad_request


# NOTE: integer fields have the ranges of their gRPC (proto) types, so that a
# value the HTTP API accepts fits the engine's int32/int64 step inputs exactly
# as a gRPC one does.
_INT_BITS = {"int32": 32, "int64": 64}
_INT_NAMES = {"int32": "a 32-bit integer", "int64": "a 64-bit integer"}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _fits(v: Any, kind: str) -> bool:
  bits = _INT_BITS[kind]
  return _is_int(v) and -2 ** (bits - 1) <= v < 2 ** (bits - 1)


def _check(name: str, value: Any, kind: str) -> Any:
  """`value` if it has JSON type `kind`, else a 400 naming `name`."""
  if kind == "number":
    if _is_int(value) and abs(value) < 2 ** 63:
      return float(value)
    if isinstance(value, float) and math.isfinite(value):
      return value
    return _fail(name, "a finite number", value)
  if kind in _INT_BITS:
    return value if _fits(value, kind) else _fail(name, _INT_NAMES[kind], value)
  if kind == "bool":
    return value if isinstance(value, bool) else _fail(name, "a boolean", value)
  if kind == "str":
    return value if isinstance(value, str) else _fail(name, "a string", value)
  if kind == "object":
    return value if isinstance(value, dict) else _fail(name, "an object", value)
  if kind == "int32_list":
    if isinstance(value, list) and all(_fits(v, "int32") for v in value):
      return value
    return _fail(name, "a list of 32-bit integers", value)
  if kind == "stop":
    if isinstance(value, str) or (isinstance(value, list)
                                  and all(isinstance(v, str) for v in value)):
      return value
    return _fail(name, "a string or a list of strings", value)
  if kind == "any":
    return value
  raise AssertionError(f"unknown field kind {kind!r}")


def _fail(name: str, expected: str, value: Any):
  raise bad_request(f"{name} must be {expected}, got {_json_type(value)}", param=name)


def _json_type(v: Any) -> str:
  if isinstance(v, bool):
    return "a boolean"
  if isinstance(v, (int, float)):
    return f"the number {v!r}"
  return {str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


class Fields:
  """A request body checked against `spec` (field name -> kind).

  Unknown fields are refused (as OpenAI's API does), so a misspelt parameter
  never silently changes nothing.
  """

  def __init__(self, body: Any, spec: Mapping[str, str]):
    if not isinstance(body, dict):
      raise bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
      raise bad_request(f"unrecognized request argument(s): {', '.join(unknown)}",
                        param=unknown[0])
    self._values = {k: _check(k, v, spec[k]) for k, v in body.items() if v is not None}

  def get(self, name: str, default: Any = None) -> Any:
    return self._values.get(name, default)

  def has(self, name: str) -> bool:
    return name in self._values

  def require_default(self, name: str, default: Any, why: str) -> None:
    """Refuses a field that is set to anything but its default."""
    if self.has(name) and self._values[name] != default:
      raise bad_request(f"{name}={self._values[name]!r} is not supported: {why}", param=name)
