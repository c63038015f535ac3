"""`pagedjax batch`: offline generation over a JSONL file, driving `LLMEngine`.

Requests are fed to the engine a window at a time and each result is written
(and flushed) the moment its request finishes, so an interrupted run loses at
most the requests in flight; a rerun skips every id already in the output.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

from engine.outputs import TokenDelta
from serving import batch_io
from serving.request_convert import checked_sampling_params, encode_chat, validate_chat


@dataclasses.dataclass
class BatchSummary:
  requests: int = 0          # lines in the input
  skipped: int = 0           # already in the output from an earlier run
  completed: int = 0         # generated in this run
  errors: int = 0            # error results written in this run
  prompt_tokens: int = 0
  cached_prompt_tokens: int = 0
  generation_tokens: int = 0
  elapsed_s: float = 0.0
  interrupted: bool = False  # stopped by Ctrl-C; a rerun finishes the rest

  @property
  def tokens_per_s(self) -> float:
    return self.generation_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

  @property
  def prefix_hit_rate(self) -> float:
    return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

  def describe(self) -> str:
    head = "batch (interrupted)" if self.interrupted else "batch"
    return (f"{head}: {self.requests} requests ({self.skipped} already done, "
            f"{self.completed} generated, {self.errors} errors) in {self.elapsed_s:.1f}s; "
            f"{self.prompt_tokens} prompt + {self.generation_tokens} generated tokens, "
            f"{self.tokens_per_s:.1f} generated tok/s, "
            f"{self.completed / self.elapsed_s if self.elapsed_s else 0:.2f} req/s; "
            f"prefix-cache hit rate {100 * self.prefix_hit_rate:.1f}%")


@dataclasses.dataclass
class _Running:
  item: batch_io.BatchItem
  text: list[str] = dataclasses.field(default_factory=list)
  token_ids: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)


def run_batch(engine, input_path: str, output_path: str,
              default_sampling: dict[str, Any] | None = None, *, window: int | None = None,
              progress: bool = True, progress_file: TextIO = sys.stderr,
              stop: threading.Event | None = None) -> BatchSummary:
  """Generates a result line in `output_path` for every input line not yet there.

  `default_sampling` holds SamplingParams fields that lines may override.
  `window` bounds requests inside the engine (default 4 * max_num_seqs).
  Setting `stop` (e.g. from a SIGINT handler) ends the run between two steps,
  like a KeyboardInterrupt does: finished results are kept, the rest is
  aborted, and the summary says `interrupted`.
  """
  window = window or 4 * engine.config.max_num_seqs
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  done = batch_io.load_done(output_path)
  items = list(batch_io.read_items(input_path))
  todo = [it for it in items if it.key not in done]
  summary = BatchSummary(requests=len(items), skipped=len(items) - len(todo))
  start = time.monotonic()
  todo.reverse()  # NOTE: pop() from the end keeps input order.
  running: dict[str, _Running] = {}
  with batch_io.ResultWriter(output_path) as out, tqdm(
      total=len(todo), unit="req", desc="batch", disable=not progress,
      file=progress_file) as bar:
    try:
      _drive(engine, todo, running, default_sampling or {}, window, out, bar, summary, start,
             stop or threading.Event())
    except KeyboardInterrupt:
      # NOTE: finished results are already flushed; in-flight ones rerun next time.
      summary.interrupted = True
      _abort_all(engine, running)
  summary.elapsed_s = time.monotonic() - start
  return summary


def _drive(engine, todo, running, defaults, window, out, bar, summary, start, stop) -> None:
  """Feeds the engine a window at a time and writes each result as it finishes."""
  while todo or running:
    if stop.is_set():
      raise KeyboardInterrupt
    while todo and len(running) < window:
      item = todo.pop()
      error = _add(engine, item, defaults, running)
      if error is not None:
        out.write(batch_io.error_result(item, error))
        summary.errors += 1
        bar.update(1)
    if not running:
      continue
    for d in engine.step():
      if d.request_id not in running:
        continue
      if not d.finished:
        _accumulate(running[d.request_id], d)
        continue
      _finish(running.pop(d.request_id), d, out, summary)
      bar.update(1)
      summary.elapsed_s = time.monotonic() - start
      bar.set_postfix_str(f"{summary.tokens_per_s:.1f} tok/s")


def _abort_all(engine, running: dict) -> None:
  """Drops the unfinished requests so the engine is idle again (no results)."""
  try:
    for rid in running:
      engine.abort(rid)
    while engine.has_unfinished_requests():
      engine.step()
  except Exception as e:  # NOTE: a hard interrupt may have torn a step; results are safe.
    print(f"batch: could not drain the engine after the interrupt: {e}", file=sys.stderr)
  running.clear()


def _add(engine, item, defaults: dict[str, Any], running: dict[str, _Running]) -> str | None:
  """Adds `item` to the engine; returns an error message instead if it is bad."""
  if isinstance(item, batch_io.BadLine):
    return item.error
  try:
    params = checked_sampling_params({**defaults, **item.sampling})
  except (TypeError, ValueError) as e:
    return f"invalid sampling parameter: {e}"
  rid = item.key
  try:
    if item.messages is not None:
      validate_chat(item.messages)
      ids = encode_chat(engine.tokenizer, item.messages)
      engine.add_request(rid, sampling_params=params, prompt_token_ids=ids,
                         cache_salt=item.cache_salt, priority=item.priority)
    else:
      engine.add_request(rid, item.prompt, params, cache_salt=item.cache_salt,
                         priority=item.priority)
  except ValueError as e:
    return str(e)
  running[rid] = _Running(item)
  return None


def _accumulate(r: _Running, d: TokenDelta) -> None:
  r.text.append(d.text)
  r.token_ids += d.token_ids
  r.logprobs += d.logprobs or []


def _finish(r: _Running, d: TokenDelta, out: batch_io.ResultWriter,
            summary: BatchSummary) -> None:
  _accumulate(r, d)
  if d.error:
    out.write(batch_io.error_result(r.item, d.error))
    summary.errors += 1
    return
  u = d.usage
  result: dict[str, Any] = {
      "id": r.item.id, "text": "".join(r.text), "token_ids": r.token_ids,
      "finish_reason": d.finish_reason.value if d.finish_reason else None,
      "usage": dataclasses.asdict(u) if u is not None else None}
  if r.item.sampling.get("logprobs") or r.logprobs:
    result["logprobs"] = r.logprobs
  out.write(result)
  summary.completed += 1
  if u is not None:
    summary.prompt_tokens += u.prompt_tokens
    summary.cached_prompt_tokens += u.cached_prompt_tokens
    summary.generation_tokens += u.completion_tokens
