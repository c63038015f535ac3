"""`pagedjax batch`: results, error lines, resume, and a real interrupted CLI run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from engine import SamplingParams
from serving.batch_runner import run_batch
from tests.serving.conftest import ENGINE_FLAGS, REPO, pagedjax_cmd, subprocess_env

LONG = "word " * 300   # more tokens than max_model_len (256)


def _write_jsonl(path, rows) -> None:
  with open(path, "w") as f:
    for row in rows:
      f.write(row if isinstance(row, str) else json.dumps(row))
      f.write("\n")


def _read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_batch_results_and_error_lines(reference_llm, tmp_path):
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_jsonl(inp, [
      {"id": "p", "prompt": "The capital of France is", "max_tokens": 5},
      "{not json",
      {"id": "long", "prompt": LONG},
      {"id": "hot", "prompt": "x", "temperature": -1},
      {"id": "role", "messages": [{"role": "wizard", "content": "hi"}]},
      {"id": "typo", "prompt": "x", "max_token": 3},
      {"id": "p", "prompt": "duplicate id"},
      {"id": 7, "messages": [{"role": "user", "content": "Say hi."}], "logprobs": True},
  ])
  # NOTE: window=1 reuses the single-sequence buckets compiled by other tests.
  summary = run_batch(reference_llm.engine, str(inp), str(out),
                      {"temperature": 0.0, "max_tokens": 4}, window=1, progress=False)
  rows = _read_jsonl(out)
  by_id = {(r["id"], r.get("line")): r for r in rows}
  assert len(rows) == 8 and len(by_id) == 8
  ref = reference_llm.generate(["The capital of France is"],
                               SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)[0]
  p = by_id[("p", None)]
  assert (p["text"], p["token_ids"], p["finish_reason"]) == (ref.text, ref.token_ids, "length")
  assert p["usage"]["prompt_tokens"] == len(ref.prompt_token_ids)
  assert p["usage"]["completion_tokens"] == 5
  assert "invalid JSON" in by_id[(None, 2)]["error"]
  assert "256" in by_id[("long", None)]["error"]
  assert "temperature" in by_id[("hot", None)]["error"]
  assert "messages[0].role" in by_id[("role", None)]["error"]
  assert "max_token" in by_id[("typo", None)]["error"]
  assert "duplicate id" in by_id[(None, 7)]["error"]
  chat = by_id[(7, None)]
  assert len(chat["token_ids"]) == len(chat["logprobs"]) == chat["usage"]["completion_tokens"]
  assert all(lp <= 0 for lp in chat["logprobs"])
  assert (summary.requests, summary.completed, summary.errors) == (8, 2, 6)
  assert summary.generation_tokens == 5 + chat["usage"]["completion_tokens"]
  assert not reference_llm.engine.has_unfinished_requests()


def test_batch_resume_skips_done_ids_and_repairs_a_torn_line(reference_llm, tmp_path):
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_jsonl(inp, [{"id": f"r{i}", "prompt": f"Count to {i}:"} for i in range(5)])
  # An earlier run finished r0 and r3, then died half-way through writing r1.
  done = [{"id": "r0", "text": "KEPT", "token_ids": [], "finish_reason": "length", "usage": {}},
          {"id": "r3", "error": "KEPT"}]
  with open(out, "w") as f:
    f.write("".join(json.dumps(d) + "\n" for d in done) + '{"id": "r1", "te')
  summary = run_batch(reference_llm.engine, str(inp), str(out),
                      {"temperature": 0.0, "max_tokens": 2}, window=1, progress=False)
  rows = _read_jsonl(out)          # every line parses: the torn one is gone
  assert sorted(r["id"] for r in rows) == [f"r{i}" for i in range(5)]
  assert rows[:2] == done
  assert (summary.skipped, summary.completed) == (2, 3)
  again = run_batch(reference_llm.engine, str(inp), str(out), progress=False)
  assert (again.skipped, again.completed) == (5, 0) and _read_jsonl(out) == rows


def test_batch_cli_interrupted_then_rerun_gives_one_result_per_id(reference_llm, serving_tmp,
                                                                 tmp_path):
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  ids = [f"q{i}" for i in range(6)]
  _write_jsonl(inp, [{"id": q, "prompt": f"Story number {i}:"} for i, q in enumerate(ids)])
  cmd = pagedjax_cmd("batch", "--input", str(inp), "--output", str(out), "--temperature", "0",
                     "--max-tokens", "12", "--ignore-eos", *ENGINE_FLAGS, "--max-num-seqs", "1")
  env = subprocess_env(serving_tmp)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while not (out.exists() and out.read_text().count("\n") >= 1):
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "interrupted" in err
  first = _read_jsonl(out)
  assert len(first) >= 1, "no result was flushed before the interrupt"
  assert len(first) < len(ids), "the run was not interrupted"
  assert "batch (interrupted)" in err and "hit rate" in err
  # NOTE: the rerun is in-process (same flags) to spare a second model load.
  rerun = run_batch(reference_llm.engine, str(inp), str(out),
                    {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}, window=1,
                    progress=False)
  assert (rerun.skipped, rerun.completed, rerun.errors) == (len(first), len(ids) - len(first), 0)
  rows = _read_jsonl(out)
  assert sorted(r["id"] for r in rows) == ids
  assert rows[:len(first)] == first
  assert all(len(r["token_ids"]) == 12 and r["finish_reason"] == "length" for r in rows)
  # Interrupted and resumed output equals an uninterrupted generation.
  params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
  for i, q in enumerate(ids):  # NOTE: one at a time: the single-sequence buckets are compiled.
    ref = reference_llm.generate([f"Story number {i}:"], params, use_tqdm=False)[0]
    assert rows[i]["token_ids"] == ref.token_ids, q
