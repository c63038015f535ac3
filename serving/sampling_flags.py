"""Sampling command-line flags shared by `pagedjax generate`, `batch` and `client`.

Every flag's default is the `SamplingParams` field default (greedy, 128
tokens: engine/sampling_params.py is the one place they are defined), so the
commands, the Python API and the server agree. Free of JAX imports: the
client must start without JAX (`engine.sampling_params` is plain Python).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from engine.sampling_params import SamplingParams
from serving.help_format import name_flags

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}

# (flag, SamplingParams field, argparse keywords, help)
_FLAGS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("--temperature", "temperature", {"type": float}, "0 = greedy; > 0 samples"),
    ("--top-p", "top_p", {"type": float},
     "nucleus mass in (0, 1], 1 = off; needs --temperature > 0"),
    ("--top-k", "top_k", {"type": int}, "keep the k likeliest tokens; 0 = off"),
    ("--min-p", "min_p", {"type": float},
     "drop tokens less likely than min-p x the top one; 0 = off"),
    ("--seed", "seed", {"type": int},
     "per-request sampling seed (default: none, one is drawn per request)"),
    ("--max-tokens", "max_tokens", {"type": int},
     "most tokens to generate per request; fewer if the context ends first"),
    ("--stop", "stop", {"action": "append"}, "stop string, repeatable (default: none)"),
    ("--stop-token-id", "stop_token_ids", {"type": int, "action": "append", "metavar": "ID"},
     "stop token id, repeatable (default: none besides the model's EOS)"),
    ("--ignore-eos", "ignore_eos", {"action": "store_true"},
     "keep generating past the model's end-of-sequence token"),
    ("--logprobs", "logprobs", {"action": "store_true"},
     "return each generated token's log-probability (a table on stderr unless --json)"),
)

# NOTE: names match `engine.SamplingParams` fields and the proto's
# `SamplingParams` message, so the kwargs pass straight through to either.
SAMPLING_FIELDS: tuple[str, ...] = tuple(field for _, field, _, _ in _FLAGS)
FLAG_OF: dict[str, str] = {field: flag for flag, field, _, _ in _FLAGS}


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
  """Adds the sampling flags to `parser`, in a "sampling" argument group."""
  g = parser.add_argument_group("sampling")
  for flag, field, kwargs, help_text in _FLAGS:
    # NOTE: `append` flags start from None (argparse cannot append to a tuple).
    default = None if kwargs.get("action") == "append" else _DEFAULTS[field]
    g.add_argument(flag, dest=field, default=default, help=help_text, **kwargs)


def sampling_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
  """The sampling fields of the parsed flags, by field name (unset ones left out)."""
  return {f: getattr(args, f) for f in SAMPLING_FIELDS if getattr(args, f, None) is not None}


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
  """The flags as `SamplingParams`; a bad value raises ValueError naming its flag."""
  try:
    return SamplingParams(**sampling_kwargs_from_args(args))
  except ValueError as e:
    raise ValueError(name_flags(str(e), FLAG_OF)) from None
