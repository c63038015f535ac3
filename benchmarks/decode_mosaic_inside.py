"""Inside the Mosaic GPU decode kernel (GPU): what it compiles to, where its time goes.

Usage: PYTHONPATH=. python3 -m benchmarks.decode_mosaic_inside --out DIR
           [--shape 64x4096/16] [--kv-dtype int8] [--block-kv 128] [--stages 4]
           [--qk-8bit 1] [--v-converters 1] [--streams 1] [--ctas 0]
           [--issuers 1] [--dynamic 0] [--asm] [--profile]

One tiling of decode_mosaic over one cache dtype (decode_mosaic_probe's
problem_at: bf16 q, 32 q / 8 kv heads x 128, every row full length):
  --asm      compiles it with Mosaic GPU's dumps on (MOSAIC_GPU_DUMP_PTXAS,
             _SASS, _PTX, into a temporary directory) and summarises each
             kernel's ptxas report (registers, spill bytes, its numbered
             notes; the report is also copied to DIR), PTX (wgmma, waits,
             local memory: PTX_OPS) and SASS (instructions by opcode, spill
             loads and stores: LDL/STL). Mosaic GPU's own SASS dump needs
             nvdisasm beside its ptxas, which the GPU image's JAX lacks;
             then each dumped PTX is assembled with the CUDA toolkit's
             ptxas and listed with its cuobjdump (sass_from_ptx), and the
             listing is copied to DIR gzipped;
  --profile  runs it under Mosaic GPU's intra-kernel profiler (the kernels'
             named scopes, one trace per warpgroup) and prints the mean time
             of each warpgroup's phases per occurrence and per CTA, and when
             each warpgroup's CTAs started and ended (cta_spans: a last
             round of items on fewer CTAs shows as a spread of ends). The
             events themselves slow the kernel: the shares count, not sums.
Writes DIR/inside.json (and the profiler's trace under DIR/trace).

NOTE: the profiler is switched on by replacing plgpu.CompilerParams in this
process with one that has profile_space and profile_dir set: the kernels
build their params at trace time (decode_mosaic_q8.compiler_params), and
serving code has no profiling knob. The ranges live in shared memory beside
the kernel's: with two streams at 4 stages about 84 a warpgroup fit.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile

SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
PTXAS_REGS = re.compile(r"Used (\d+) registers")
PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
PTX_OPS = ("wgmma.mma_async", "wgmma.wait_group", "wgmma.fence", "ld.local",
           "st.local", "bar.sync", "mbarrier.try_wait", "cp.async.bulk",
           "setmaxnreg")
KEY_OPS = ("LDL", "STL", "LDS", "STS", "LDSM", "PRMT", "HADD2", "HFMA2", "HMUL2",
           "F2F", "F2FP", "I2F", "MUFU", "FMUL", "FADD", "FFMA", "FMNMX", "SHFL",
           "BAR", "SYNCS", "HGMMA", "IGMMA", "QGMMA", "WARPGROUP", "IMAD", "IADD3",
           "LOP3", "SHF", "LEA", "BRA")


def sass_summary(text: str) -> dict:
  """Instructions of a SASS listing by opcode (the part before the first
  dot): the total, the KEY_OPS counts and the ten most frequent."""
  ops = collections.Counter(m.group(1) for m in map(SASS_LINE.search,
                                                    text.splitlines()) if m)
  return dict(total=sum(ops.values()),
              key={op: ops.get(op, 0) for op in KEY_OPS},
              top=ops.most_common(10))


def ptxas_summary(text: str) -> dict:
  """Registers and spill bytes of each function a ptxas -v report lists,
  and its numbered notes (e.g. "(C7519) warpgroup.arrive is injected ...")
  with how often each came."""
  regs = [int(x) for x in PTXAS_REGS.findall(text)]
  spills = [(int(a), int(b)) for a, b in PTXAS_SPILL.findall(text)]
  notes = collections.Counter(
      re.sub(r"line \d+", "line N", l.split(":", 1)[-1].strip())
      for l in text.splitlines() if re.search(r"\(C\d+\)", l))
  return dict(registers=regs, spill_store_bytes=[a for a, _ in spills],
              spill_load_bytes=[b for _, b in spills], notes=dict(notes))


def ptx_summary(text: str) -> dict:
  """How often each of PTX_OPS occurs in a PTX listing."""
  return {op: text.count(op) for op in PTX_OPS}


def phase_means(trace: dict, warpgroups: int) -> dict:
  """{warpgroup: {scope: [mean µs per occurrence, occurrences per trace]}}
  of a Mosaic GPU profiler trace (its "B"/"E" events; one trace per
  warpgroup of each CTA, tid - 1 = CTA * warpgroups + warpgroup)."""
  open_at, total = {}, collections.defaultdict(float)
  count, traces = collections.Counter(), collections.defaultdict(set)
  for e in trace["traceEvents"]:
    wg = (e["tid"] - 1) % warpgroups
    key = (e["tid"], e["name"])
    if e["ph"] == "B":
      open_at[key] = e["ts"]
    elif key in open_at:
      total[wg, e["name"]] += e["ts"] - open_at.pop(key)
      count[wg, e["name"]] += 1
      traces[wg].add(e["tid"])
  out = collections.defaultdict(dict)
  for (wg, name), t in sorted(total.items()):
    n = count[wg, name]
    out[str(wg)][name] = [round(t / n, 4), round(n / len(traces[wg]), 2)]
  return dict(out)


def cta_spans(trace: dict, warpgroups: int) -> dict:
  """{warpgroup: {"start": [min, max], "end": [min, median, max], "busy":
  mean}} µs from the trace's first event: when each CTA's warpgroup began
  its first range and ended its last (one trace per warpgroup of each CTA,
  as phase_means), and the mean of end - start."""
  first, last = {}, {}
  for e in trace["traceEvents"]:
    tid = e["tid"]
    first[tid] = min(first.get(tid, e["ts"]), e["ts"])
    last[tid] = max(last.get(tid, e["ts"]), e["ts"])
  if not first:
    return {}
  t0 = min(first.values())
  out = {}
  for wg in sorted({(tid - 1) % warpgroups for tid in first}):
    tids = [t for t in first if (t - 1) % warpgroups == wg]
    starts = sorted(first[t] - t0 for t in tids)
    ends = sorted(last[t] - t0 for t in tids)
    busy = sum(last[t] - first[t] for t in tids) / len(tids)
    out[str(wg)] = dict(start=[round(starts[0], 3), round(starts[-1], 3)],
                        end=[round(ends[0], 3), round(ends[len(ends) // 2], 3),
                             round(ends[-1], 3)],
                        busy=round(busy, 3))
  return out


def config_of(args):
  from pallas_kernels.decode_mosaic import DecodeMosaicConfig  # pylint: disable=g-import-not-at-top
  return DecodeMosaicConfig(block_kv=args.block_kv, stages=args.stages,
                            qk_8bit=bool(args.qk_8bit),
                            v_converters=args.v_converters, streams=args.streams,
                            ctas=args.ctas, issuers=args.issuers,
                            dynamic=bool(args.dynamic))


def run_once(args, profile_dir: str | None) -> float:
  """Compiles and runs the tiling once (with the profiler if profile_dir);
  returns its relative error against the float32 reference."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas import mosaic_gpu as plgpu  # pylint: disable=g-import-not-at-top
  import pallas_kernels as pk  # pylint: disable=g-import-not-at-top
  from benchmarks.decode_mosaic_probe import problem_at  # pylint: disable=g-import-not-at-top
  from benchmarks.measure import rel_err  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_mosaic import decode_mosaic  # pylint: disable=g-import-not-at-top
  if profile_dir:
    plgpu.CompilerParams = functools.partial(
        plgpu.CompilerParams, profile_space=args.profile_space,
        profile_dir=profile_dir, profile_bounds_check=True)
  problem = problem_at(args.shape, args.kv_dtype)
  scale = problem[0].shape[-1] ** -0.5
  f = jax.jit(functools.partial(decode_mosaic, scale=scale,
                                config=config_of(args), interpret=args.interpret))
  out = jax.block_until_ready(f(*problem))
  return rel_err(out, pk.paged_decode_attention_reference(*problem, scale=scale))


def cuda_tool(name: str) -> str | None:
  """A CUDA toolkit binary: on PATH, else under CUDA_HOME or /usr/local/cuda."""
  for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
    if root and os.access(os.path.join(root, "bin", name), os.X_OK):
      return os.path.join(root, "bin", name)
  return shutil.which(name)


def sass_from_ptx(dump_dir: str) -> list[str]:
  """Writes NAME.sass beside each dumped NAME.ptx (ptxas for the PTX's own
  .target, then cuobjdump -sass) where no SASS listing was dumped; returns
  the listings written ([] without the tools)."""
  ptxas, cuobjdump = cuda_tool("ptxas"), cuda_tool("cuobjdump")
  if not (ptxas and cuobjdump) or glob.glob(os.path.join(dump_dir, "*.sass")):
    return []
  written = []
  for ptx in sorted(glob.glob(os.path.join(dump_dir, "*.ptx"))):
    with open(ptx) as f:
      target = re.search(r"^\s*\.target\s+(\w+)", f.read(), re.M)
    base = ptx[:-len(".ptx")]
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, check=True)
    try:
      run(ptxas, f"-arch={target.group(1) if target else 'sm_90a'}", "-o",
          base + ".cubin", ptx)
      listing = run(cuobjdump, "-sass", base + ".cubin").stdout
    except subprocess.CalledProcessError as e:
      print(f"sass_from_ptx: {os.path.basename(ptx)}: {e.stderr.strip()[-400:]}")
      continue
    with open(base + ".sass", "w") as f:
      f.write(listing)
    written.append(base + ".sass")
  return written


def asm_report(dump_dir: str) -> dict:
  """{file name: summary} of the dumps: ptxas reports and SASS listings."""
  out = {}
  for path in sorted(glob.glob(os.path.join(dump_dir, "*"))):
    with open(path, errors="replace") as f:
      text = f.read()
    name = os.path.basename(path)
    if name.endswith(".cubin"):
      continue
    if PTXAS_REGS.search(text):
      out[name] = ptxas_summary(text)
    elif SASS_LINE.search(text):
      out[name] = sass_summary(text)
    elif name.endswith(".ptx"):
      out[name] = ptx_summary(text)
  return out


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="directory for dumps, trace, inside.json")
  p.add_argument("--shape", default="64x4096/16", help="default: %(default)s")
  p.add_argument("--kv-dtype", default="int8", help="default: %(default)s")
  p.add_argument("--block-kv", type=int, default=128, help="default: %(default)s")
  p.add_argument("--stages", type=int, default=4, help="default: %(default)s")
  p.add_argument("--qk-8bit", type=int, default=1, help="default: %(default)s")
  p.add_argument("--v-converters", type=int, default=1, help="default: %(default)s")
  p.add_argument("--streams", type=int, default=1, help="default: %(default)s")
  p.add_argument("--ctas", type=int, default=0,
                 help="8-bit: the grid's CTA cap, 0 one an item (default: %(default)s)")
  p.add_argument("--issuers", type=int, default=1, help="default: %(default)s")
  p.add_argument("--dynamic", type=int, default=0,
                 help="8-bit with --ctas: items from a global counter (default: %(default)s)")
  p.add_argument("--profile-space", type=int, default=320,
                 help="profiler ranges per warpgroup (default: %(default)s)")
  p.add_argument("--asm", action="store_true", help="dump and summarise ptxas and SASS")
  p.add_argument("--profile", action="store_true", help="phase means from the profiler")
  p.add_argument("--interpret", action="store_true", help=argparse.SUPPRESS)
  return p


def main(argv=None) -> dict:
  args = parser().parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  # NOTE: Mosaic GPU dumps every pass of the module; only the summary and
  # the ptxas report are kept under --out (a device call returns few files).
  dump_dir = tempfile.mkdtemp(prefix="mosaic_dump_")
  if args.asm:
    for flag in ("PTXAS", "SASS", "PTX"):
      os.environ[f"MOSAIC_GPU_DUMP_{flag}"] = "1"
    os.environ["MOSAIC_GPU_DUMP_TO"] = dump_dir
  trace_dir = os.path.join(args.out, "trace") if args.profile else None
  if trace_dir:
    os.makedirs(trace_dir, exist_ok=True)
  report = dict(shape=args.shape, kv_dtype=args.kv_dtype,
                config=dict(block_kv=args.block_kv, stages=args.stages,
                            qk_8bit=args.qk_8bit, v_converters=args.v_converters,
                            streams=args.streams, ctas=args.ctas,
                            issuers=args.issuers, dynamic=args.dynamic),
                err=run_once(args, trace_dir))
  if args.asm:
    for path in sass_from_ptx(dump_dir):
      with open(path, "rb") as f, gzip.open(
          os.path.join(args.out, os.path.basename(path) + ".gz"), "wb") as g:
        g.write(f.read())
    report["asm"] = asm_report(dump_dir)
    for path in glob.glob(os.path.join(dump_dir, "*.ptxas")):
      shutil.copy(path, args.out)
  shutil.rmtree(dump_dir, ignore_errors=True)
  if trace_dir:
    traces = sorted(glob.glob(os.path.join(trace_dir, "*-trace.json")))
    if not traces:
      raise RuntimeError(f"the profiler wrote no trace under {trace_dir}: was "
                         "the kernel's CompilerParams made before the patch?")
    from pallas_kernels.decode_mosaic_q8 import num_warpgroups  # pylint: disable=g-import-not-at-top
    warpgroups = (2 if args.kv_dtype == "bfloat16"
                  else num_warpgroups(config_of(args)))
    with open(traces[-1]) as f:
      trace = json.load(f)
    report["phases"] = phase_means(trace, warpgroups)
    report["cta_spans"] = cta_spans(trace, warpgroups)
  with open(os.path.join(args.out, "inside.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  main()
