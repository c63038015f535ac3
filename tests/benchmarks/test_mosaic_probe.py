"""benchmarks/mosaic_probe.py: its watched children and report, on CPU.

The kernel runs in Mosaic GPU interpret mode (`--interpret`) on the tiny
shape; the GPU run itself is the integrator's (docs/kernels.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import mosaic_probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _probe(tmp_path, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.mosaic_probe", "--interpret",
       "--shapes", "tiny", "--out", str(tmp_path), *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  results = json.loads((tmp_path / "mosaic_probe.json").read_text())
  return proc, {r["variant"]: r for r in results}


def test_variants_run_checked_against_the_reference(tmp_path):
  proc, results = _probe(tmp_path, "--variants", "default")
  assert proc.returncode == 0, proc.stdout[-3000:]
  for variant in ("default",):
    assert results[variant]["status"] == "ok", results[variant]
    assert results[variant]["err"] < mosaic_probe.TOLERANCE
  assert "best tiny:" in (tmp_path / "mosaic_probe.md").read_text()


def test_a_hung_job_is_killed_and_the_next_one_runs(tmp_path):
  proc, results = _probe(tmp_path, "--variants", "default,p-smem",
                         "--job_timeout_s", "0.5", "--startup_s", "0")
  assert proc.returncode == 0
  assert [r["status"] for r in results.values()] == ["hung", "hung"]
  assert proc.stdout.count("HUNG") == 2


def test_report_picks_the_fastest_correct_variant():
  results = [
      dict(variant="cudnn", shape="4096", status="ok", us=100.0, tflops=500.0),
      dict(variant="a", shape="4096", status="ok", us=200.0, tflops=250.0,
           err=2e-3),
      dict(variant="b", shape="4096", status="wrong", us=100.0, tflops=500.0,
           err=0.5),
      dict(variant="c", shape="4096", status="error", detail="ValueError: x"),
      dict(variant="d", shape="4096", status="ok", us=150.0, tflops=400.0,
           err=2e-3),
  ]
  md = mosaic_probe.to_markdown(results)
  assert "best 4096: d 400 TFLOP/s (80% of cuDNN)" in md
  assert "| 4096 | c | error (ValueError: x) |" in md


def test_preflight_covers_the_kernels_benchmark_problems():
  jobs = mosaic_probe._jobs(mosaic_probe.argparse.Namespace(
      preflight=True, variants="", shapes="", interpret=False))
  assert {v for v, _ in jobs} == {"default"}
  assert {s for _, s in jobs} == {"kernels-small0", "kernels-small1",
                                  "kernels-small2", "kernels-4096+0",
                                  "kernels-4096+2048"}


def test_8_bit_shapes_run_the_8_bit_kernel_and_triton(tmp_path):
  """NAME@dtype quantizes the cache: the Mosaic variant runs prefill_mosaic_q8,
  "triton" the Triton kernel, both checked against the reference."""
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.mosaic_probe", "--interpret",
       "--shapes", "tiny@int8", "--variants", "default,triton", "--out",
       str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stdout[-3000:]
  results = json.loads((tmp_path / "mosaic_probe.json").read_text())
  assert [(r["variant"], r["shape"], r["status"]) for r in results] == [
      ("default", "tiny@int8", "ok"), ("triton", "tiny@int8", "ok")]
  assert all(r["err"] < mosaic_probe.TOLERANCE and r["kernel_us"] is None
             for r in results)
