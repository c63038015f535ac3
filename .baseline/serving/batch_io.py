"""JSONL input/output of `pagedjax batch`: parsing, resume state, result lines.

Input line: {"id": ..., "prompt": "..." | "messages": [{"role", "content"}...],
optional sampling fields (see `SAMPLING_FIELDS`), "cache_salt", "priority"}.
Result line: {"id", "text", "token_ids", "finish_reason", "usage"} or
{"id", "line", "error"}. Every result is flushed when written, so the output
file is the resume state: ids already in it are skipped on a rerun.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, TextIO

from serving.sampling_flags import SAMPLING_FIELDS

_KNOWN_KEYS = frozenset({"id", "prompt", "messages", "cache_salt", "priority"}
                        | set(SAMPLING_FIELDS))


@dataclasses.dataclass
class BatchItem:
  """One well-formed input line (sampling values are checked later)."""
  line_no: int
  id: str | int
  prompt: str | None
  messages: list[dict] | None
  sampling: dict[str, Any]
  cache_salt: str | None = None
  priority: int = 0

  @property
  def key(self) -> str:
    return result_key(self.id, self.line_no)


@dataclasses.dataclass
class BadLine:
  """An input line that cannot become a request; it gets an error result."""
  line_no: int
  id: str | int | None
  error: str

  @property
  def key(self) -> str:
    return result_key(self.id, self.line_no)


def result_key(item_id: Any, line_no: int) -> str:
  """The resume key: the id, or the line number for lines without a usable id."""
  return f"line:{line_no}" if item_id is None else f"id:{item_id}"


def parse_line(text: str, line_no: int) -> BatchItem | BadLine:
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    return BadLine(line_no, None, f"line {line_no}: invalid JSON: {e}")
  if not isinstance(obj, dict):
    return BadLine(line_no, None, f"line {line_no}: expected a JSON object")
  item_id = obj.get("id")
  if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
    return BadLine(line_no, None, f"line {line_no}: 'id' must be a non-empty string or an integer")
  unknown = sorted(set(obj) - _KNOWN_KEYS)
  if unknown:
    return BadLine(line_no, item_id, f"unknown field(s) {unknown}")
  prompt, messages = obj.get("prompt"), obj.get("messages")
  if (prompt is None) == (messages is None):
    return BadLine(line_no, item_id, "give exactly one of 'prompt' and 'messages'")
  if prompt is not None and (not isinstance(prompt, str) or not prompt):
    return BadLine(line_no, item_id, "'prompt' must be a non-empty string")
  if messages is not None and not _valid_messages(messages):
    return BadLine(line_no, item_id,
                   "'messages' must be a non-empty list of {\"role\": str, \"content\": str}")
  salt, priority = obj.get("cache_salt"), obj.get("priority", 0)
  if salt is not None and not isinstance(salt, str):
    return BadLine(line_no, item_id, "'cache_salt' must be a string")
  if isinstance(priority, bool) or not isinstance(priority, int):
    return BadLine(line_no, item_id, "'priority' must be an integer")
  sampling = {k: obj[k] for k in SAMPLING_FIELDS if k in obj}
  return BatchItem(line_no, item_id, prompt, messages, sampling, salt, priority)


def _valid_messages(messages: Any) -> bool:
  return (isinstance(messages, list) and bool(messages) and all(
      isinstance(m, dict) and set(m) == {"role", "content"}
      and isinstance(m["role"], str) and isinstance(m["content"], str) for m in messages))


def read_items(path: str) -> Iterator[BatchItem | BadLine]:
  """Every non-blank line of the input, parsed; duplicate ids become BadLines."""
  seen: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for line_no, text in enumerate(f, start=1):
      if not text.strip():
        continue
      item = parse_line(text, line_no)
      if item.id is not None:
        first = seen.setdefault(item.key, line_no)
        if first != line_no:
          item = BadLine(line_no, None, f"line {line_no}: duplicate id {item.id!r} "
                         f"(first on line {first})")
      yield item


def load_done(path: str) -> set[str]:
  """Keys of the results already in `path`, dropping a torn last line.

  NOTE: a crash can leave a partial last line (no newline); it is cut off so
  the next append starts on a fresh line and that request runs again.
  """
  if not os.path.exists(path):
    return set()
  with open(path, "rb+") as f:
    data = f.read()
    end = data.rfind(b"\n") + 1
    if end != len(data):
      f.truncate(end)
  done = set()
  for raw in data[:end].splitlines():
    try:
      obj = json.loads(raw)
    except json.JSONDecodeError:
      continue
    if isinstance(obj, dict) and ("id" in obj or "line" in obj):
      done.add(result_key(obj.get("id"), obj.get("line", 0)))
  return done


class ResultWriter:
  """Appends one JSON result per line, flushed as soon as it is written."""

  def __init__(self, path: str):
    self._f: TextIO = open(path, "a", encoding="utf-8")

  def write(self, result: dict[str, Any]) -> None:
    self._f.write(json.dumps(result, ensure_ascii=False) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()

  def __enter__(self) -> "ResultWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def error_result(item: BatchItem | BadLine, message: str) -> dict[str, Any]:
  out: dict[str, Any] = {"id": item.id, "error": message}
  if item.id is None:
    out["line"] = item.line_no
  return out
