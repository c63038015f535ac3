"""`pagedjax batch`: results, error lines, resume, and a real interrupted CLI run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from engine import SamplingParams
from serving import cli
from serving.batch_runner import run_batch
from tests.serving.conftest import ENGINE_FLAGS, REPO, pagedjax_cmd, subprocess_env

LONG = "word " * 300   # more tokens than max_model_len (256)


def _write_jsonl(path, rows) -> None:
  with open(path, "wb") as f:
    for row in rows:
      if isinstance(row, dict):
        row = json.dumps(row)
      f.write((row.encode() if isinstance(row, str) else row) + b"\n")


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
      b'{"id": "latin1", "prompt": "caf\xe9"}',          # not UTF-8: this line's error only
  ])
  # NOTE: window=1 reuses the single-sequence buckets compiled by other tests.
  summary = run_batch(reference_llm.engine, str(inp), str(out),
                      {"temperature": 0.0, "max_tokens": 4}, window=1, progress=False)
  rows = _read_jsonl(out)
  by_line = {r["line"]: r for r in rows if "error" in r}
  ok = {r["id"]: r for r in rows if "error" not in r}
  assert len(rows) == 9 and len(by_line) == 7 and set(ok) == {"p", 7}
  # A "prompt" is a user message with the chat template, as in `pagedjax generate`.
  (ref,) = reference_llm.chat([{"role": "user", "content": "The capital of France is"}],
                              SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)
  p = ok["p"]
  assert (p["text"], p["token_ids"], p["finish_reason"]) == (ref.text, ref.token_ids, "length")
  assert p["usage"]["prompt_tokens"] == len(ref.prompt_token_ids)
  assert p["usage"]["completion_tokens"] == 5
  assert by_line[2]["error"].startswith("invalid JSON: ") and by_line[2]["id"] is None
  assert "256" in by_line[3]["error"] and by_line[3]["id"] == "long"
  assert "temperature" in by_line[4]["error"]
  assert "messages[0].role" in by_line[5]["error"]
  assert "max_token" in by_line[6]["error"]
  assert by_line[7]["error"] == "duplicate id 'p' (first on line 1)"
  assert by_line[9]["error"].startswith("not valid UTF-8") and by_line[9]["id"] is None
  # One line number per error result: its "line"; the messages hold none of their own.
  assert all(f"line {n}" not in r["error"] for n, r in by_line.items())
  assert all(not re.search(r"\bline \d", r["error"]) for n, r in by_line.items() if n != 7)
  chat = ok[7]
  assert len(chat["token_ids"]) == len(chat["logprobs"]) == chat["usage"]["completion_tokens"]
  assert all(lp <= 0 for lp in chat["logprobs"])
  assert (summary.requests, summary.completed, summary.errors) == (9, 2, 7)
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
  cmd = pagedjax_cmd("batch", "--input", str(inp), "--output", str(out), "--no-chat-template",
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
                    progress=False, chat_template=False)
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


def _refuse_model(monkeypatch) -> None:
  def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr("models.load_model", refuse)


def _one_line_error(err: str) -> str:
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("pagedjax: error: "), err
  return lines[0]


def test_batch_cli_refuses_a_bad_output_before_loading(tmp_path, monkeypatch, capsys):
  _refuse_model(monkeypatch)
  inp = tmp_path / "in.jsonl"
  _write_jsonl(inp, [{"id": 1, "prompt": "Hi"}])
  before = inp.read_bytes()
  (tmp_path / "a-dir").mkdir()
  os.symlink(inp, tmp_path / "link.jsonl")
  for output, why in ((tmp_path / "no-such-dir" / "out.jsonl", "No such file or directory"),
                      (tmp_path / "a-dir", "Is a directory"),
                      (tmp_path / "." / "in.jsonl", "same file"),
                      (tmp_path / "link.jsonl", "same file")):
    assert cli.main(["batch", "--input", str(inp), "--output", str(output)]) == 2, output
    assert why in _one_line_error(capsys.readouterr().err)
  assert inp.read_bytes() == before


# Runs argv[1:] as this user but, if root, without CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH (prctl PR_CAPBSET_DROP, then exec), so file modes bind it.
_UNPRIVILEGED = """
import ctypes, os, sys
if os.geteuid() == 0:
  libc = ctypes.CDLL(None, use_errno=True)
  for cap in (1, 2):
    if libc.prctl(24, cap, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_batch_cli_refuses_a_read_only_output_before_loading(tmp_path, serving_tmp):
  inp, ro_dir, ro_file = tmp_path / "in.jsonl", tmp_path / "ro", tmp_path / "ro.jsonl"
  _write_jsonl(inp, [{"id": 1, "prompt": "Hi"}])
  ro_dir.mkdir()
  ro_file.write_text("")
  ro_dir.chmod(0o555)
  ro_file.chmod(0o444)
  try:
    for output in (ro_dir / "out.jsonl", ro_file):
      cmd = pagedjax_cmd("batch", "--input", str(inp), "--output", str(output))
      proc = subprocess.run([sys.executable, "-c", _UNPRIVILEGED, *cmd], cwd=REPO,
                            env=subprocess_env(serving_tmp), capture_output=True, text=True,
                            timeout=60)
      assert proc.returncode == 2, proc.stderr
      assert "Permission denied" in _one_line_error(proc.stderr)   # no load, no traceback
  finally:
    ro_dir.chmod(0o755)


def test_batch_cli_resume_with_nothing_left_ends_without_loading(tmp_path, monkeypatch,
                                                                 capsys):
  _refuse_model(monkeypatch)
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_jsonl(inp, [{"id": "a", "prompt": "Hi"}, {"id": "b", "prompt": "Ho"}])
  _write_jsonl(out, [{"id": "a", "text": "x", "token_ids": [], "finish_reason": "stop",
                      "usage": {}},
                     {"id": "b", "text": "y", "token_ids": [], "finish_reason": "stop",
                      "usage": {}}])
  assert cli.main(["batch", "--input", str(inp), "--output", str(out)]) == 0
  assert "2 already done" in capsys.readouterr().err
  # An error result left by an earlier run still makes the exit status 3.
  _write_jsonl(out, [{"id": "a", "line": 1, "error": "boom"},
                     {"id": "b", "text": "y", "token_ids": [], "finish_reason": "stop",
                      "usage": {}}])
  assert cli.main(["batch", "--input", str(inp), "--output", str(out)]) == 3
  assert "1 of them errors" in capsys.readouterr().err


def test_batch_cli_exit_status_3_when_a_line_fails(smollm2_model, tmp_path, monkeypatch,
                                                   capsys):
  monkeypatch.setattr("models.load_model", lambda *a, **k: smollm2_model)
  inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_jsonl(inp, [b'{"id": "bad", "prompt": "\xff"}', {"id": "good", "prompt": "Hi"}])
  rc = cli.main(["batch", "--input", str(inp), "--output", str(out), "--max-tokens", "2",
                 *ENGINE_FLAGS])
  err = capsys.readouterr().err
  assert rc == 3, err
  rows = {r["line"] if "error" in r else r["id"]: r for r in _read_jsonl(out)}
  assert rows[1]["error"].startswith("not valid UTF-8") and len(rows["good"]["token_ids"]) == 2
  assert "pagedjax: loading" in err and "KV cache:" in err        # progress while loading
