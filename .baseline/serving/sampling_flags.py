"""Sampling command-line flags shared by `pagedjax batch` and `pagedjax client`.

Deliberately free of engine imports: the client must start without JAX. Flags
the user does not pass are left out (`argparse.SUPPRESS`) so the receiver's
defaults (SamplingParams, or the server's) apply.
"""
from __future__ import annotations

import argparse
from typing import Any

# NOTE: names match `engine.SamplingParams` fields and the proto's
# `SamplingParams` message, so the kwargs pass straight through to either.
SAMPLING_FIELDS: tuple[str, ...] = (
    "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "stop",
    "stop_token_ids", "ignore_eos", "logprobs")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
  """Adds the sampling flags to `parser`, in a "sampling" argument group."""
  g = parser.add_argument_group("sampling")
  s = argparse.SUPPRESS
  g.add_argument("--temperature", type=float, default=s, help="0 = greedy (default 1)")
  g.add_argument("--top-p", dest="top_p", type=float, default=s, help="nucleus mass in (0, 1]")
  g.add_argument("--top-k", dest="top_k", type=int, default=s, help="0 = off")
  g.add_argument("--min-p", dest="min_p", type=float, default=s, help="0 = off")
  g.add_argument("--seed", type=int, default=s, help="per-request sampling seed")
  g.add_argument("--max-tokens", dest="max_tokens", type=int, default=s,
                 help="most tokens to generate per request (default 16)")
  g.add_argument("--stop", action="append", default=s,
                 help="stop string (repeatable)")
  g.add_argument("--stop-token-id", dest="stop_token_ids", type=int,
                 action="append", default=s, help="stop token id (repeatable)")
  g.add_argument("--ignore-eos", dest="ignore_eos", action="store_true", default=s)
  g.add_argument("--logprobs", action="store_true", default=s,
                 help="return per-token log-probabilities")


def sampling_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
  """The sampling fields set on the command line, by field name."""
  return {f: getattr(args, f) for f in SAMPLING_FIELDS if hasattr(args, f)}
