"""How every `pagedjax` flag shows its default, and how errors name flags.

NOTE: a flag's help ends in "(default: X)", X being the parser's real default
as `show_default` writes it (the formatter adds it; nobody types it). A flag
whose default is None (worked out at run time) says in its own help what it
becomes: "(default: ...)". tests/test_cli.py checks this for every flag of
every command. Kept free of JAX imports so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import re
from typing import Any, Mapping

_IDENTIFIER = re.compile(r"\b[a-z][a-z0-9_]*\b")


def show_default(value: Any) -> str:
  """A default as help shows it: on/off for switches, comma-joined sequences."""
  if value == "":
    return "empty"
  if isinstance(value, bool):
    return "on" if value else "off"
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value) or "none"
  return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Keeps descriptions and epilogs as written; appends each flag's default."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if ("(default" in text or not action.option_strings or action.default is None
        or action.default is argparse.SUPPRESS):
      return text
    shown = show_default(action.default).replace("%", "%%")
    return f"{text} (default: {shown})" if text else f"(default: {shown})"


def name_flags(message: str, flag_of: Mapping[str, str]) -> str:
  """Rewrites field names in an error message as the flags that set them.

  `SamplingParams` and `EngineConfig` errors start with the field name
  ("top_p must be in (0, 1], ..."); the command line should say `--top-p`.
  The leading word and any identifier with an underscore are rewritten (a
  plain word elsewhere, such as "model" in "the model's context", is not).
  """
  def swap(m: re.Match) -> str:
    word = m.group(0)
    if word in flag_of and (m.start() == 0 or "_" in word):
      return flag_of[word]
    return word
  return _IDENTIFIER.sub(swap, message)
