"""Renders a model's own chat template in a sandboxed jinja2 environment."""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any

import jinja2
from jinja2 import sandbox


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators=None, sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
  """Compiles a template once. NOTE: trim_blocks/lstrip_blocks match how HF
  renders chat templates, so our prompts are byte-identical to transformers'."""
  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env.from_string(source)


def render_chat(source: str, messages: list[dict], add_generation_prompt: bool,
                **special_tokens: Any) -> str:
  """Renders `messages` with the template `source`.

  Raises ValueError on malformed messages or a template error.
  """
  if not isinstance(messages, list) or not all(
      isinstance(m, dict) and "role" in m for m in messages):
    raise ValueError("messages must be a list of dicts with a 'role' key")
  try:
    return compile_template(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        **special_tokens)
  except jinja2.exceptions.TemplateError as e:
    raise ValueError(f"chat template error: {e}") from None
