"""What `pagedjax generate` and `client` print on stderr after a plain-text answer.

Only in plain mode: with --json everything is in the JSON object.
"""
from __future__ import annotations

import sys
from typing import Sequence, TextIO


def cut_notice(finish_reason: str | None, completion_tokens: int,
               max_tokens: int) -> str | None:
  """The notice for an answer that ended mid-way (finish reason "length"), or None."""
  if finish_reason != "length":
    return None
  if completion_tokens >= max_tokens:
    return (f"pagedjax: the answer was cut at --max-tokens {max_tokens}; pass a larger "
            "--max-tokens for the rest")
  return (f"pagedjax: the answer was cut after {completion_tokens} tokens by the end of "
          "the context (--max-model-len)")


def print_logprobs(token_ids: Sequence[int], logprobs: Sequence[float],
                   pieces: Sequence[str] | None = None, file: TextIO | None = None) -> None:
  """A table of the generated tokens and their log-probabilities."""
  file = file or sys.stderr
  print(f"{'#':>4}  {'token':>7}  {'logprob':>9}" + ("  text" if pieces else ""), file=file)
  for i, (tok, lp) in enumerate(zip(token_ids, logprobs)):
    text = f"  {pieces[i]!r}" if pieces else ""
    print(f"{i:>4}  {tok:>7}  {lp:>9.4f}{text}", file=file)
  if logprobs:
    print(f"sum {sum(logprobs):.4f} over {len(logprobs)} tokens", file=file)
