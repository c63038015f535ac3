"""benchmarks/decode_mosaic_probe.py on CPU: children, checks, report and table.

The kernels run in Mosaic GPU / Triton interpret mode (`--interpret`, wall-clock
times that mean nothing); the GPU run is docs/benchmarks.md's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import decode_mosaic_probe as probe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_tilings_are_checked_and_the_best_merged_into_the_table(tmp_path):
  table = tmp_path / "cpu.json"
  kept = dict(batch=1, context=64, kv_heads=8, head_dim=128, block_size=16, itemsize=2,
              block_kv=64, stages=2, num_splits=1)
  table.write_text(json.dumps({"device_kind": "cpu", "decode": [{"batch": 7}],
                               "decode_mosaic": [kept]}))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.decode_mosaic_probe", "--interpret",
       "--shapes", "2x256/16", "--block-kv", "64", "--stages", "2", "--splits", "1,2",
       "--out", str(tmp_path), "--write-table", "--table-dir", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads((tmp_path / "decode_mosaic_probe.json").read_text())["rows"]
  mosaic = [r for r in rows if r["kind"] == "mosaic"]
  assert [r["config"]["num_splits"] for r in mosaic] == [1, 2]
  assert all(r["err"] < probe.TOLERANCE for r in mosaic), mosaic
  assert {r["kind"] for r in rows} == {"read", "triton", "mosaic"}
  out = json.loads(table.read_text())
  assert out["decode"] == [{"batch": 7}]                    # the Triton entries stay
  new = [e for e in out["decode_mosaic"] if e["batch"] == 2]
  assert len(new) == 1 and new[0]["context"] == 256 and new[0]["block_size"] == 16
  assert kept in out["decode_mosaic"]                       # another class stays
  assert "| 2x256/16 |" in (tmp_path / "decode_mosaic_probe.md").read_text()


def test_pick_weighs_full_and_quarter_lengths():
  row = lambda n, us, q: dict(config=n, us=us, us_quarter=q)
  fast_long, even = row("a", 100.0, 40.0), row("b", 105.0, 25.0)
  assert probe.pick([fast_long, even])["config"] == "b"
  assert probe.pick([fast_long])["config"] == "a"
  assert probe.pick([]) is None


def test_grid_keeps_one_step_per_split_and_the_shared_memory():
  cfgs = probe.grid(8, 256, 8, (64, 128), (2, 3, 4), (1, 2, 4, 8))
  assert cfgs and all(c.num_splits * c.block_kv <= 256 for c in cfgs)
  assert all(c.smem_bytes(128, 2) <= 227 * 1024 for c in cfgs)
  assert probe.parse_shape("64x2048/128") == (64, 2048, 128)


def test_an_8_bit_cache_is_probed_against_bf16(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.decode_mosaic_probe", "--interpret",
       "--shapes", "2x128/16", "--block-kv", "64", "--stages", "3", "--splits", "1",
       "--kv-dtype", "bfloat16,int8", "--qk-8bit", "0,1", "--out", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads((tmp_path / "decode_mosaic_probe.json").read_text())["rows"]
  int8 = [r for r in rows if r["kv_dtype"] == "int8" and r["kind"] == "mosaic"]
  assert [r["config"]["qk_8bit"] for r in int8] == [False, True], int8
  assert all(r["err"] < probe.TOLERANCE for r in int8), int8
  assert {r["kv_dtype"] for r in rows} == {"bfloat16", "int8"}
  md = (tmp_path / "decode_mosaic_probe.md").read_text()
  assert "| 2x128/16 | int8 |" in md and "| 2x128/16 | bfloat16 |" in md
  # the scales' gather, timed alone, for the 8-bit cache only
  gathers = [r for r in rows if r["kind"] == "gather"]
  assert [r["kv_dtype"] for r in gathers] == ["int8"]
  assert gathers[0]["us"] > 0 and gathers[0]["us_quarter"] > 0
  assert "The scales' XLA gather, in every time below" in md
  # 8-bit stages take shared memory too: at block_kv 128 the ring stops at 4.
  assert len(probe.grid(8, 4096, 8, (128,), (4, 5), (1,), quantized=True)) == 1
  assert len(probe.grid(8, 4096, 8, (128,), (2, 3), (1,))) == 2
  # The 8-bit kernel's options multiply its grid (two V converters need 128 rows); a
  # bf16 cache's grid has neither.
  both = dict(qk_8bit=(False, True), v_converters=(1, 2))
  eight = probe.grid(8, 4096, 8, (64, 128), (2,), (1,), quantized=True, **both)
  assert sorted((c.block_kv, c.qk_8bit, c.v_converters) for c in eight) == [
      (64, False, 1), (64, True, 1), (128, False, 1), (128, False, 2), (128, True, 1),
      (128, True, 2)]
  assert len(probe.grid(8, 4096, 8, (64, 128), (2,), (1,), **both)) == 2
  # Two streams double the shared memory: 64-key steps only; bf16 has none.
  two = probe.grid(8, 4096, 8, (64, 128), (2,), (1,), quantized=True, streams=(1, 2))
  assert sorted((c.block_kv, c.streams) for c in two) == [(64, 1), (64, 2), (128, 1)]
  assert {c.streams for c in probe.grid(8, 4096, 8, (64,), (2,), (1,), streams=(1, 2))} == {1}
  # CTAs taking items in turn: 8-bit only; "sm" is the device's SM count (CPU: 2)
  ctas = probe.grid(8, 4096, 8, (64,), (2,), (1,), quantized=True, ctas=(0, 132))
  assert sorted(c.ctas for c in ctas) == [0, 132]
  assert {c.ctas for c in probe.grid(8, 4096, 8, (64,), (2,), (1,), ctas=(0, 132))} == {0}
  assert probe.resolve_ctas(("0", "sm", "7")) == (0, 2, 7)
  # warps issuing the copies: at most two a stream, 8-bit only
  iss = probe.grid(8, 4096, 8, (64,), (2,), (1,), quantized=True, streams=(1, 2),
                   issuers=(1, 2, 4))
  assert sorted((c.streams, c.issuers) for c in iss) == [(1, 1), (1, 2), (2, 1), (2, 2),
                                                         (2, 4)]


def test_a_table_merge_keeps_the_other_kv_dtypes_of_a_shape(tmp_path):
  shape = dict(batch=64, context=4096, kv_heads=8, head_dim=128, block_size=16)
  bf16 = dict(shape, itemsize=2, block_kv=128, stages=2, num_splits=1)
  e4m3 = dict(shape, itemsize=1, kv_cache_dtype="float8_e4m3", block_kv=128, stages=4,
              num_splits=1)
  int8 = dict(e4m3, kv_cache_dtype="int8")
  probe.write_table([bf16, e4m3], str(tmp_path))
  probe.write_table([int8], str(tmp_path))
  probe.write_table([dict(int8, stages=3)], str(tmp_path))
  out = json.loads((tmp_path / "cpu.json").read_text())["decode_mosaic"]
  assert sorted(e.get("kv_cache_dtype", "bfloat16") for e in out) == [
      "bfloat16", "float8_e4m3", "int8"]
  assert dict(int8, stages=3) in out  # a re-measured class replaces its own entry


def test_a_recorded_run_rebuilds_its_table_entries_without_measuring(tmp_path):
  best = dict(config=dict(block_kv=128, stages=4, num_splits=1, qk_8bit=True,
                          v_converters=1), us=206.6, us_quarter=79.0)
  run = dict(rows=[], summary=[
      dict(shape="64x4096/16", kv_dtype="int8", read_us=123.4, triton_us=320.8,
           best=best),
      dict(shape="256x1024/16", kv_dtype="int8", read_us=123.3, triton_us=279.0,
           best=None)])  # no correct tiling: no entry
  (tmp_path / "run.json").write_text(json.dumps(run))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.decode_mosaic_probe", "--from-run",
       str(tmp_path / "run.json"), "--device-kind", "NVIDIA H200", "--table-dir",
       str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = json.loads((tmp_path / "nvidia-h200.json").read_text())
  (entry,) = table["decode_mosaic"]
  assert (entry["batch"], entry["kv_cache_dtype"], entry["qk_8bit"], entry["us"]) == (
      64, "int8", True, 206.6)
  assert entry["pct_of_read"] == round(100 * 123.4 / 206.6, 1)
  assert "--from-run run.json --device-kind 'NVIDIA H200'" in table["decode_mosaic_command"]
