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
       str(tmp_path), "--write-table", "--table-dir", str(tmp_path)], cwd=ROOT,
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:]
  results = json.loads((tmp_path / "mosaic_probe.json").read_text())
  assert [(r["variant"], r["shape"], r["status"]) for r in results] == [
      ("default", "tiny@int8", "ok"), ("triton", "tiny@int8", "ok")]
  assert all(r["err"] < mosaic_probe.TOLERANCE and r["kernel_us"] is None
             for r in results)
  table = json.loads((tmp_path / "cpu.json").read_text())
  [entry] = table["prefill_mosaic_q8"]
  assert (entry["kv_cache_dtype"], entry["head_dim"], entry["block_size"]) == ("int8", 64, 16)
  assert entry["us"] == round(results[0]["us"], 1)
  assert entry["triton_us"] == round(results[1]["us"], 1)


def test_a_recorded_run_writes_the_8_bit_entries_of_another_device(tmp_path):
  """--from-run: entries only where both the default variant and triton
  were right; the table's other keys kept."""
  run = [dict(variant="default", shape="4096@int8", status="ok", us=900.04, err=3e-3),
         dict(variant="triton", shape="4096@int8", status="ok", us=1000.0, err=3e-3),
         dict(variant="default", shape="4096@float8_e4m3", status="wrong", us=1.0,
              err=0.5),
         dict(variant="triton", shape="4096@float8_e4m3", status="ok", us=1.0, err=3e-3),
         dict(variant="default", shape="4096", status="ok", us=800.0, err=2e-3)]
  (tmp_path / "run.json").write_text(json.dumps(run))
  (tmp_path / "nvidia-h200.json").write_text(json.dumps({"decode_mosaic": [1]}))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.mosaic_probe", "--from-run",
       str(tmp_path / "run.json"), "--device-kind", "NVIDIA H200", "--table-dir",
       str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = json.loads((tmp_path / "nvidia-h200.json").read_text())
  assert table["decode_mosaic"] == [1]
  assert table["prefill_mosaic_q8"] == [dict(
      shape="4096@int8", kv_cache_dtype="int8", head_dim=128, block_size=16, us=900.0,
      triton_us=1000.0, err=3e-3)]
