"""scripts/merge_sweeps.py: pieces of a sweep from several GPU visits into one table and fit."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest

from research import cost_model as cm
from tests.experiments.helpers import TINY_SHAPE, TRUTH, synthetic_samples

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "merge_sweeps.py")


def _script():
  spec = importlib.util.spec_from_file_location("merge_sweeps", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _row(mode: str, block: int, waste: float) -> dict:
  return {"mode": mode, "block_size": block, "waste_pct": waste, "stranded_free_pct_when_blocked": 0,
          "mean_concurrency": 2.0, "peak_concurrency": 3, "chat_itl_p99_s": 0.1,
          "report_itl_p99_s": 0.1, "chat_ttft_p99_s": 1.0, "report_ttft_p99_s": 1.0,
          "failed_for_memory": 0, "preemptions": 0}


def _steps(n: int, seed: int) -> list[dict]:
  return [{"mode": "paged/chunked", "block_size": 16, "features": f, "seconds": t}
          for f, t in synthetic_samples(n, seed)]


def test_merge_dedups_runs_refits_and_plots(tmp_path):
  old = {"meta": {"device": "GPU-X", "title": "t"},
         "rows": [_row("paged/chunked", 16, 9.0), _row("contiguous/chunked", 16, 30.0)]}
  partial = {"rows": [_row("paged/chunked", 16, 1.0), _row("paged/chunked", 64, 4.0)],
             "steps": _steps(40, seed=0)}
  steps = {"meta": {}, "shape": dataclasses.asdict(TINY_SHAPE), "steps": _steps(20, seed=1)}
  paths = []
  for name, d in (("old.json", old), ("partial.json", partial), ("steps.json", steps)):
    (tmp_path / name).write_text(json.dumps(d))
    paths.append(str(tmp_path / name))
  out, fitted = tmp_path / "merged", tmp_path / "cost.json"
  assert _script().main(["--out", str(out), "--fit-cost-model", str(fitted), *paths]) == 0
  merged = json.loads((out / "sweep.json").read_text())
  # The later piece wins for paged/16; runs are ordered by (mode, block size).
  assert [(r["mode"], r["block_size"], r["waste_pct"]) for r in merged["rows"]] == [
      ("contiguous/chunked", 16, 30.0), ("paged/chunked", 16, 1.0), ("paged/chunked", 64, 4.0)]
  assert merged["meta"]["device"] == "GPU-X" and merged["meta"]["merged_from"] == paths
  assert (out / "sweep_waste.png").stat().st_size > 1000
  model = cm.load(fitted)
  assert model.fit_error["steps"] == 60
  assert model.coefficients["decode_row"] == pytest.approx(TRUTH["decode_row"], rel=1e-6)


def test_merge_without_steps_file_cannot_fit(tmp_path):
  (tmp_path / "a.json").write_text(json.dumps({"rows": [_row("paged/chunked", 16, 1.0)]}))
  with pytest.raises(SystemExit, match="sweep_steps.json"):
    _script().main(["--out", str(tmp_path / "o"), "--fit-cost-model", str(tmp_path / "c.json"),
                    str(tmp_path / "a.json")])
