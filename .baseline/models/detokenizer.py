"""Incremental detokenization for streaming: never half a UTF-8 character."""
from __future__ import annotations

from typing import Sequence

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
  """Turns a growing token stream into text deltas.

  Each push decodes a short window: the tokens since the last emitted boundary
  with and without the new ones; the difference is the new text. A delta whose
  text ends in U+FFFD (an incomplete UTF-8 sequence) is held back until later
  tokens complete it.

  NOTE: boundaries only move to points where the decoded window ended cleanly,
  so the concatenation of all deltas (plus `flush()`) equals decode(all ids).
  """

  def __init__(self, tokenizer, skip_special_tokens: bool = True):
    self._tokenizer = tokenizer
    self._skip = skip_special_tokens
    self._ids: list[int] = []
    self._prefix_offset = 0  # start of the decode window
    self._read_offset = 0    # tokens before this are already emitted
    self._text = ""

  @property
  def text(self) -> str:
    """All text emitted so far."""
    return self._text

  @property
  def token_ids(self) -> list[int]:
    return list(self._ids)

  def _decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode(list(ids), skip_special_tokens=self._skip)

  def push(self, token_ids: Sequence[int] | int) -> str:
    """Adds tokens; returns the newly completed text (possibly "")."""
    if isinstance(token_ids, int):
      token_ids = [token_ids]
    self._ids.extend(int(t) for t in token_ids)
    prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
    full = self._decode(self._ids[self._prefix_offset:])
    if len(full) <= len(prefix) or full.endswith(_REPLACEMENT):
      return ""
    delta = full[len(prefix):]
    self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
    self._text += delta
    return delta

  def flush(self) -> str:
    """Emits whatever is held back (at end of stream), even if incomplete."""
    prefix = self._decode(self._ids[self._prefix_offset:self._read_offset])
    full = self._decode(self._ids[self._prefix_offset:])
    delta = full[len(prefix):]
    self._prefix_offset = self._read_offset = len(self._ids)
    self._text += delta
    return delta
