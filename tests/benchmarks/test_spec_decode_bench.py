"""benchmarks/spec_decode.py's GPU mode on CPU with the tiny Llama (the GPU run uses the
8B shapes): the self-check, verify inputs the step accepts, step times, the projection."""
from __future__ import annotations

import os

import numpy as np

from benchmarks import spec_decode, spec_step_times

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")


def test_self_check_with_the_tiny_model():
  check = spec_step_times.check_correctness(TINY, new=12)
  assert all(check["spec_equal_reference"]) and all(check["spec_equal_engine_without"])
  assert check["proposed"] > 0


def test_step_times_and_projection(monkeypatch):
  from engine import LLM
  monkeypatch.setattr(spec_step_times, "read_bandwidth", lambda: 1e10)
  llm = LLM(f"random:{TINY}", speculative="ngram", num_speculative_tokens=2, max_num_seqs=2,
            max_model_len=64, num_blocks=16)
  runner = llm.engine.runner
  x = spec_step_times.verify_inputs(runner, 2, 20, 2)
  tokens, _, counts = runner._run("verify", x, 1)
  assert np.asarray(tokens).shape == (3, 2) and set(np.asarray(counts).tolist()) <= {1, 2, 3}
  # Each row's positions 19..21 on its own table, the drafts its next two tokens.
  np.testing.assert_array_equal(x.positions.reshape(2, 3), [[19, 20, 21]] * 2)
  np.testing.assert_array_equal(x.drafts, x.tokens.reshape(2, 3)[:, 1:])
  rows = spec_step_times.step_times(TINY, (1, 2), (2,), 20)
  assert [(r["batch"], r["k"]) for r in rows] == [(1, 0), (1, 2), (2, 0), (2, 2)]
  assert all(r["step_ms"] > 0 and r["roofline_ms"] > 0 for r in rows)
  cpu = {"runs": {"off": {"tokens_per_row_step": 1.0}, "k=2": {"tokens_per_row_step": 1.5}}}
  projected = spec_decode.project(rows, cpu)
  r = projected[1]
  assert r["projected_speedup"] == round(1.5 * r["decode_ms"] / r["step_ms"], 2)
  assert "projected_speedup" not in projected[0]
  table = spec_decode.to_markdown({"rows": projected})
  assert "| 1 | verify k=2 |" in table and "| 2 | decode |" in table
