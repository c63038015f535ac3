"""`pagedjax batch`: offline generation over a JSONL file, driving `LLMEngine`.

Requests are fed to the engine a window at a time and each result is written
(and flushed) the moment its request finishes, so an interrupted run loses at
most the requests in flight; a rerun skips every id already in the output.
`plan_batch` reads the input and opens the output without a model, so the
command checks both, and finds out whether anything is left to do, before it
loads the engine.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

from engine.outputs import OutputAccumulator, TokenDelta
from engine.prompts import encode_prompt
from serving import batch_io
from serving.prompt_flags import CHAT_TEMPLATE_DEFAULT, prompt_token_ids
from serving.request_convert import checked_sampling_params, validate_chat


@dataclasses.dataclass
class BatchSummary:
  requests: int = 0          # lines in the input
  skipped: int = 0           # already in the output from an earlier run
  completed: int = 0         # generated in this run
  errors: int = 0            # error results written in this run
  earlier_errors: int = 0    # error results an earlier run left in the output
  prompt_tokens: int = 0
  cached_prompt_tokens: int = 0
  generation_tokens: int = 0
  elapsed_s: float = 0.0
  interrupted: bool = False  # stopped by Ctrl-C; a rerun finishes the rest

  @property
  def any_errors(self) -> bool:
    """Whether the output holds an error result (from this run or an earlier one)."""
    return self.errors + self.earlier_errors > 0

  @property
  def tokens_per_s(self) -> float:
    return self.generation_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

  @property
  def prefix_hit_rate(self) -> float:
    return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

  def describe(self) -> str:
    head = "batch (interrupted)" if self.interrupted else "batch"
    earlier = f", {self.earlier_errors} of them errors" if self.earlier_errors else ""
    return (f"{head}: {self.requests} requests ({self.skipped} already done{earlier}, "
            f"{self.completed} generated, {self.errors} errors) in {self.elapsed_s:.1f}s; "
            f"{self.prompt_tokens} prompt + {self.generation_tokens} generated tokens, "
            f"{self.tokens_per_s:.1f} generated tok/s, "
            f"{self.completed / self.elapsed_s if self.elapsed_s else 0:.2f} req/s; "
            f"prefix-cache hit rate {100 * self.prefix_hit_rate:.1f}%")


@dataclasses.dataclass
class _Running:
  item: batch_io.BatchItem
  deltas: OutputAccumulator = dataclasses.field(default_factory=OutputAccumulator)


@dataclasses.dataclass
class BatchPlan:
  """The input read and the output opened: what is left to do, before any model."""
  results: batch_io.ResultFile
  todo: list                 # BatchItems and BadLines without a result yet, input order
  summary: BatchSummary      # requests, skipped, earlier_errors filled in

  def close(self) -> None:
    self.results.close()


def plan_batch(input_path: str, output_path: str) -> BatchPlan:
  """Opens the output (OSError if it cannot be written) and reads the input.

  Raises ValueError if both paths name the same file.
  """
  if batch_io.same_file(input_path, output_path):
    raise ValueError(f"the input and the output are the same file ({output_path!r}): "
                     "results would be appended to the input")
  items = list(batch_io.read_items(input_path))
  results = batch_io.ResultFile(output_path)
  todo = [it for it in items if it.key not in results.done]
  return BatchPlan(results, todo, BatchSummary(
      requests=len(items), skipped=len(items) - len(todo), earlier_errors=results.errors))


def run_batch(engine, input_path: str, output_path: str,
              default_sampling: dict[str, Any] | None = None, **kwargs) -> BatchSummary:
  """Generates a result line in `output_path` for every input line not yet there.

  `kwargs`: those of `run_plan`.
  """
  plan = plan_batch(input_path, output_path)
  try:
    return run_plan(engine, plan, default_sampling, **kwargs)
  finally:
    plan.close()


def run_plan(engine, plan: BatchPlan, default_sampling: dict[str, Any] | None = None, *,
             window: int | None = None, progress: bool = True,
             progress_file: TextIO = sys.stderr, stop: threading.Event | None = None,
             chat_template: bool = CHAT_TEMPLATE_DEFAULT) -> BatchSummary:
  """Runs what `plan` has left to do.

  `default_sampling` holds SamplingParams fields that lines may override.
  `window` bounds requests inside the engine (default 4 * max_num_seqs).
  `chat_template`: a "prompt" line is a user message (the model's chat
  template applied), as in `pagedjax generate`; False: raw text.
  Setting `stop` (e.g. from a SIGINT handler) ends the run between two steps,
  like a KeyboardInterrupt does: finished results are kept, the rest is
  aborted, and the summary says `interrupted`.
  """
  window = window or 4 * engine.config.max_num_seqs
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  summary, start = plan.summary, time.monotonic()
  todo = plan.todo[::-1]  # NOTE: pop() from the end keeps input order.
  running: dict[str, _Running] = {}
  add = functools.partial(_add, engine, defaults=default_sampling or {}, running=running,
                          chat_template=chat_template)
  with tqdm(total=len(todo), unit="req", desc="batch", disable=not progress,
            file=progress_file) as bar:
    try:
      _drive(engine, todo, running, add, window, plan.results, bar, summary, start,
             stop or threading.Event())
    except KeyboardInterrupt:
      # NOTE: finished results are already flushed; in-flight ones rerun next time.
      summary.interrupted = True
      _abort_all(engine, running)
  summary.elapsed_s = time.monotonic() - start
  return summary


def _drive(engine, todo, running, add, window, out, bar, summary, start, stop) -> None:
  """Feeds the engine a window at a time and writes each result as it finishes."""
  while todo or running:
    if stop.is_set():
      raise KeyboardInterrupt
    while todo and len(running) < window:
      item = todo.pop()
      error = add(item)
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
        running[d.request_id].deltas.add(d)
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


def _add(engine, item, *, defaults: dict[str, Any], running: dict[str, _Running],
         chat_template: bool) -> str | None:
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
      ids = encode_prompt(engine.tokenizer, messages=item.messages)
    else:
      ids = prompt_token_ids(engine.tokenizer, item.prompt, chat_template)
    engine.add_request(rid, sampling_params=params, prompt_token_ids=ids,
                       cache_salt=item.cache_salt, priority=item.priority)
  except ValueError as e:
    return str(e)
  running[rid] = _Running(item)
  return None


def _finish(r: _Running, d: TokenDelta, out: batch_io.ResultFile,
            summary: BatchSummary) -> None:
  r.deltas.add(d)
  if d.error:
    out.write(batch_io.error_result(r.item, d.error))
    summary.errors += 1
    return
  u = d.usage
  result: dict[str, Any] = {
      "id": r.item.id, "text": r.deltas.text, "token_ids": r.deltas.token_ids,
      "finish_reason": d.finish_reason.value if d.finish_reason else None,
      "usage": dataclasses.asdict(u) if u is not None else None}
  if r.item.sampling.get("logprobs") or r.deltas.logprobs:
    result["logprobs"] = r.deltas.logprobs
  out.write(result)
  summary.completed += 1
  if u is not None:
    summary.prompt_tokens += u.prompt_tokens
    summary.cached_prompt_tokens += u.cached_prompt_tokens
    summary.generation_tokens += u.completion_tokens
