"""benchmarks/warmup.py end to end on CPU with the tiny Llama: two real `pagedjax serve`
starts sharing one fresh compilation-cache directory (the GPU run uses the 8B)."""
from __future__ import annotations

import json
import os

from benchmarks import warmup

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")


def test_cold_then_warm_start_to_serving(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  out = tmp_path / "warmup.json"
  result = warmup.main(["--out", str(out), "--model", TINY, "--dtype", "float32",
                        "--max-num-seqs", "1", "--max-model-len", "32", "--max-batch-tokens", "16",
                        "--num-decode-steps", "1", "--runs", "2", "--", "--num-blocks", "16"])
  cold, warm = result["runs"]
  for run in (cold, warm):      # 1 decode + 1 prefill shape, each compiled (or loaded) once
    assert run["planned_shapes"] == run["compilations"] == 2
    assert 0 < run["listening_s"] <= run["serving_s"]
    assert run["compile_seconds_metric"] > 0
  assert cold["cache_files"] >= 2 and warm["cache_files"] == cold["cache_files"]
  assert json.loads(out.read_text())["runs"] == result["runs"]
  printed = capsys.readouterr().out
  assert "| 1 | cold (empty) |" in printed and "| 2 | warm (filled by run 1) |" in printed
