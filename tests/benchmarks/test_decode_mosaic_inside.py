"""benchmarks/decode_mosaic_inside.py on CPU: its summaries of ptxas, SASS and
profiler traces on written inputs, and one interpret-mode run of the kernel
(the dumps and the profiler need the GPU: docs/benchmarks.md has their runs)."""
from __future__ import annotations

import json

from benchmarks import decode_mosaic_inside as inside

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/              @!P0 LDS.U16 R4, [R2+0x80] ;
        /*0030*/                   PRMT R5, R4, 0x7604, R5 ;
        /*0040*/                   PRMT R6, R4, 0x7054, R6 ;
        /*0050*/               @P1 STL [R1+0x8], R5 ;
        /*0060*/                   HGMMA.64x16x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0070*/                   BRA 0x70;
"""

PTXAS = """ptxas info    : Compiling entry function 'mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for mosaic_gpu_kernel
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers
ptxas info    : (C7519) warpgroup.arrive is injected in around line 751 by compiler
ptxas info    : (C7519) warpgroup.arrive is injected in around line 2010 by compiler
"""

PTX = """  wgmma.fence.sync.aligned;
  wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1}, %rd1, %rd2;
  wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%f1}, %rd3, %rd4;
  wgmma.wait_group.sync.aligned 0;
"""


def test_sass_is_counted_by_opcode_with_predicates_and_suffixes_dropped():
  s = inside.sass_summary(SASS)
  assert s["total"] == 8
  assert s["key"]["PRMT"] == 2 and s["key"]["LDS"] == 1 and s["key"]["STL"] == 1
  assert s["key"]["HGMMA"] == 1 and s["key"]["LDL"] == 0
  assert s["top"][0] == ["PRMT", 2] or s["top"][0] == ("PRMT", 2)


def test_ptxas_report_gives_registers_and_spills():
  assert inside.ptxas_summary(PTXAS) == dict(
      registers=[168], spill_store_bytes=[16], spill_load_bytes=[8],
      notes={"(C7519) warpgroup.arrive is injected in around line N by compiler": 2})
  assert inside.ptxas_summary("nothing") == dict(
      registers=[], spill_store_bytes=[], spill_load_bytes=[], notes={})


def test_ptx_counts_the_wgmma_and_their_waits():
  got = inside.ptx_summary(PTX)
  assert got["wgmma.mma_async"] == 2 and got["wgmma.wait_group"] == 1
  assert got["wgmma.fence"] == 1 and got["ld.local"] == 0


def test_asm_report_tells_the_files_apart(tmp_path):
  (tmp_path / "k.sass").write_text(SASS)
  (tmp_path / "k.ptxas").write_text(PTXAS)
  (tmp_path / "k.ptx").write_text(PTX)
  (tmp_path / "k.mlir-passes.log").write_text("// some pass\n")
  report = inside.asm_report(str(tmp_path))
  assert set(report) == {"k.sass", "k.ptxas", "k.ptx"}
  assert report["k.ptx"]["wgmma.mma_async"] == 2
  assert report["k.ptxas"]["registers"] == [168]
  assert report["k.sass"]["total"] == 8


def test_phase_means_per_warpgroup_over_traces():
  ev = lambda name, ph, ts, tid: dict(name=name, ph=ph, ts=ts, tid=tid, pid=1)
  # two CTAs of two warpgroups: tids 1, 2 (CTA 0) and 3, 4 (CTA 1)
  trace = {"traceEvents": [
      ev("qk", "B", 0.0, 1), ev("qk", "E", 1.0, 1),
      ev("qk", "B", 2.0, 1), ev("qk", "E", 5.0, 1),
      ev("qk", "B", 0.0, 3), ev("qk", "E", 2.0, 3),
      ev("wait", "B", 0.0, 2), ev("wait", "E", 4.0, 2),
      ev("wait", "B", 1.0, 4), ev("wait", "E", 1.5, 4),
      ev("qk", "E", 9.0, 3),  # an end without a begin is ignored
  ]}
  out = inside.phase_means(trace, warpgroups=2)
  assert out["0"]["qk"] == [2.0, 1.5]    # (1 + 3 + 2) / 3, 3 ranges / 2 traces
  assert out["1"]["wait"] == [2.25, 1.0]
  assert set(out) == {"0", "1"}
  spans = inside.cta_spans(trace, warpgroups=2)
  assert spans["0"] == dict(start=[0.0, 0.0], end=[5.0, 9.0, 9.0], busy=7.0)
  assert spans["1"] == dict(start=[0.0, 1.0], end=[1.5, 4.0, 4.0], busy=2.25)
  assert inside.cta_spans({"traceEvents": []}, warpgroups=2) == {}


def test_one_interpreted_run_is_checked_and_reported(tmp_path):
  report = inside.main(["--out", str(tmp_path), "--shape", "2x256/16",
                        "--kv-dtype", "int8", "--block-kv", "64", "--stages", "2",
                        "--interpret"])
  assert report["err"] < 1e-2
  assert "asm" not in report and "phases" not in report
  saved = json.loads((tmp_path / "inside.json").read_text())
  assert saved["config"] == dict(block_kv=64, stages=2, qk_8bit=1, v_converters=1,
                                 streams=1, ctas=0, issuers=1, dynamic=0)


def test_sass_from_ptx_assembles_for_the_ptx_target(tmp_path, monkeypatch):
  # NOTE: stand-ins for the CUDA toolkit's ptxas and cuobjdump (not on this
  # machine): they record the arguments and print a listing.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "ptxas").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n'
                                 'touch "$3"\n')  # -arch=.. -o CUBIN PTX
  (bin_dir / "cuobjdump").write_text(f"#!/bin/sh\ntest -f \"$2\" && cat <<'X'\n{SASS}\nX\n")
  for tool in ("ptxas", "cuobjdump"):
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setenv("CUDA_HOME", str(tmp_path))
  dump = tmp_path / "dump"
  dump.mkdir()
  (dump / "k.ptx").write_text(".version 8.7\n.target sm_90a\n" + PTX)
  assert inside.sass_from_ptx(str(dump)) == [str(dump / "k.sass")]
  assert (bin_dir / "args").read_text().split()[0] == "-arch=sm_90a"
  report = inside.asm_report(str(dump))
  assert set(report) == {"k.ptx", "k.sass"}  # the cubin is skipped
  assert report["k.sass"]["key"]["HGMMA"] == 1
  assert inside.sass_from_ptx(str(dump)) == []  # a listing exists already
