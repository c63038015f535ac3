"""benchmarks/kernels.py's report, on CPU (the timings themselves are GPU-only)."""
from __future__ import annotations

from benchmarks import kernels


def _row(**over):
  row = dict(shape="64x2048 32/8x128", ours_us=170.0, ours_tbs=3.2, ours_pct=82.0,
             mosaic_us=134.0, mosaic_pct=104.0, mosaic_err=2.4e-3, builtin_us=180.0,
             builtin_cfg="ppcb=8,k=1", builtin_pct=78.0, xla_us=900.0, read_us=140.0,
             read_tbs=3.8, speedup=1.06)
  row.update(over)
  return row


def test_decode_table_has_both_backends_and_a_failed_mosaic_row():
  md = kernels.to_markdown([_row(), _row(mosaic_us=float("nan"), mosaic_pct=float("nan"),
                                         mosaic_err="ValueError: no wgmma")], [])
  lines = md.splitlines()
  assert "Mosaic µs" in lines[0] and "Triton µs" in lines[0]
  assert "| 134.0 (104%) |" in lines[2]
  assert "failed: ValueError: no wgmma" in lines[3]
