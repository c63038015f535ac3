"""Compiles, checks and times the Mosaic GPU paged decode kernel's tilings (GPU).

Usage: PYTHONPATH=. python3 -m benchmarks.decode_mosaic_probe [--out DIR]
           [--shapes 64x2048/16,8x8192/128] [--block-kv 64,128]
           [--stages 2,3,4] [--splits 1,2,4,8] [--max-ctas 2112]
           [--kv-dtype bfloat16,int8,float8_e4m3] [--qk-8bit 0,1]
           [--v-converters 1,2] [--streams 1] [--ctas 0,sm] [--issuers 1]
           [--dynamic 0,1] [--job_timeout_s 240]
           [--write-table [--table-dir DIR]] [--interpret]
       PYTHONPATH=. python3 -m benchmarks.decode_mosaic_probe --from-run JSON
           --device-kind KIND [--table-dir DIR]

Per KV-cache dtype and shape (batch x context / block size; bf16 q, 32 q /
8 kv heads x 128, every row full length, shuffled tables, the cache holding
only the used blocks; an 8-bit cache is the bf16 one quantized per token and
head, and its grid also spans v_converters and, for int8, qk_8bit): a read-only pass
over those KV bytes (values and scales: the ceiling), the Triton kernel
with the engine's tiling (the device's tuning table), and every Mosaic
tiling of the grid that fits shared memory and has >= one step per split,
each checked against the float32 reference (relative error) at full
length. The best Mosaic tiling is also timed with rows at a quarter of the
context. Each shape runs in a child process killed after --job_timeout_s (a
hang or crash costs that shape only). Prints a table per shape and a
summary (an 8-bit dtype's best time also over bf16's best at the shape, the
issue-15 target being <= 0.6); writes decode_mosaic_probe.json / .md under
--out after each shape.
--from-run JSON --device-kind KIND merges a recorded run's best tilings into
KIND's table without measuring (a run made without --write-table).
With --write-table, the best tiling per shape (lowest geometric mean of its
time over the best at full and at a quarter length) becomes a "decode_mosaic"
entry of the device's tuning table (pallas_kernels/tuning.py), replacing an
entry of the same class and keeping the others. --interpret runs the kernels
in interpret mode with wall-clock times (CPU tests of this script only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks import tables
from benchmarks.decode_mosaic_report import HEADS
from benchmarks.decode_mosaic_report import SHAPES
from benchmarks.decode_mosaic_report import TOLERANCE  # pylint: disable=unused-import
from benchmarks.decode_mosaic_report import parse_shape
from benchmarks.decode_mosaic_report import pick  # pylint: disable=unused-import
from benchmarks.decode_mosaic_report import save
from benchmarks.decode_mosaic_report import summarize
from benchmarks.decode_mosaic_report import summary_table
from benchmarks.decode_mosaic_report import table_entries
from benchmarks.decode_mosaic_report import table_from_run
from benchmarks.decode_mosaic_report import write_table

# NOTE: no JAX device work at import: the parent only watches children.
RESULT = "RESULT "


def grid(batch: int, ctx: int, hkv: int, block_kv, stages, splits,
         max_ctas: int = 16 * 132, quantized: bool = False, qk_8bit=(False,),
         v_converters=(1,), streams=(1,), ctas=(0,), issuers=(1,), dynamic=(0,)):
  """(block_kv, stages, splits) points with >= one step per split and at
  most `max_ctas` CTAs (at least the one-split points); for an 8-bit cache
  also each of the qk_8bit, v_converters, streams, ctas, issuers and dynamic
  values that tiling can take."""
  from pallas_kernels.decode_mosaic import DecodeMosaicConfig  # pylint: disable=g-import-not-at-top
  from pallas_kernels.prefill_mosaic import SMEM_BYTES  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_mosaic_q8_compute import q_cols  # pylint: disable=g-import-not-at-top
  cols = q_cols(HEADS[0] // HEADS[1]) if quantized else 0
  out = []
  eight_bit = ((qk_8bit, v_converters, streams, ctas, issuers, dynamic)
               if quantized else ((False,), (1,), (1,), (0,), (1,), (0,)))
  for bkv, st, ns, qk8, conv, sm, n, iss, dyn in itertools.product(
      block_kv, stages, splits, *eight_bit):
    try:
      cfg = DecodeMosaicConfig(block_kv=bkv, stages=st, num_splits=ns,
                               qk_8bit=bool(qk8), v_converters=conv, streams=sm,
                               ctas=n, issuers=iss, dynamic=bool(dyn))
    except ValueError:  # e.g. two V converters need block_kv >= 128
      continue
    if (cfg.smem_bytes(HEADS[2], 2, cols) <= SMEM_BYTES and ns * bkv <= ctx
        and (ns == 1 or batch * hkv // sm * ns <= max_ctas)):
      out.append(cfg)
  return out


def problem_at(shape: str, kv_dtype: str):
  """(q, cache, block tables, lengths) at `shape` (HEADS, rows full length,
  shuffled tables) over a `kv_dtype` cache (bf16, or it quantized)."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks.kv_quant import cache_of  # pylint: disable=g-import-not-at-top
  from benchmarks.tune_kernels import make_problem  # pylint: disable=g-import-not-at-top
  batch, ctx, bs = parse_shape(shape)
  q, kv, tables, lengths = make_problem(jax.random.key(0), batch, ctx, *HEADS, bs)
  return q, cache_of(kv, kv_dtype), tables, lengths


def child(args) -> None:
  """Measures one shape; prints RESULT lines (JSON)."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import pallas_kernels as pk  # pylint: disable=g-import-not-at-top
  from benchmarks.measure import guarded, rel_err, timed  # pylint: disable=g-import-not-at-top
  from benchmarks.tune_kernels import read_us, timed_compiled, with_length  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_mosaic import decode_mosaic, supports  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_mosaic_q8 import gather_scales  # pylint: disable=g-import-not-at-top

  interpret = args.interpret
  timer = timed_compiled if not interpret else _wall_us
  batch, ctx, bs = parse_shape(args.child)
  _, hkv, d = HEADS
  kv_dtype = args.kv_dtype[0]  # a child measures one
  problem = problem_at(args.child, kv_dtype)
  scale = d ** -0.5
  ref = pk.paged_decode_attention_reference(*problem, scale=scale)
  emit = lambda **r: print(RESULT + json.dumps(
      dict(shape=args.child, kv_dtype=kv_dtype, **r)), flush=True)
  emit(kind="read", us=read_us(problem[1], batch, ctx, bs),
       us_quarter=read_us(problem[1], batch, ctx // 4, bs))
  triton = functools.partial(pk.paged_decode_attention, scale=scale,
                             backend="triton", interpret=interpret)
  emit(kind="triton", us=timed(triton, *problem),
       us_quarter=timed(triton, *with_length(problem, ctx // 4)),
       err=rel_err(jax.jit(triton)(*problem), ref))
  if kv_dtype != "bfloat16":  # the XLA gather every 8-bit time includes
    gather = lambda kv, tables, lengths: gather_scales(kv.scales, tables, lengths,
                                                       min(args.block_kv))
    emit(kind="gather", us=timed(gather, *problem[1:]),
         us_quarter=timed(gather, *with_length(problem, ctx // 4)[1:]))
  for cfg in grid(batch, ctx, hkv, args.block_kv, args.stages, args.splits,
                  args.max_ctas, kv_dtype != "bfloat16", args.qk_8bit,
                  args.v_converters, args.streams, resolve_ctas(args.ctas),
                  args.issuers, args.dynamic):
    if not supports(*problem[:2], cfg):  # e.g. qk_8bit over e4m3
      continue
    f = jax.jit(functools.partial(decode_mosaic, scale=scale, config=cfg,
                                  interpret=interpret))
    t0 = time.time()
    exe = guarded(lambda f=f: f.lower(*problem).compile(), limit=1200)
    config = dict(block_kv=cfg.block_kv, stages=cfg.stages,
                  num_splits=cfg.num_splits)
    if kv_dtype != "bfloat16":
      config.update(qk_8bit=cfg.qk_8bit, v_converters=cfg.v_converters,
                    streams=cfg.streams, ctas=cfg.ctas, issuers=cfg.issuers,
                    dynamic=cfg.dynamic)
    row = dict(kind="mosaic", config=config, compile_s=time.time() - t0)
    if isinstance(exe, str):
      emit(**row, error=exe)
      continue
    row["err"] = rel_err(exe(*problem), ref)
    row["us"] = timer(exe, *problem)
    row["us_quarter"] = timer(exe, *with_length(problem, ctx // 4))
    emit(**row)


def resolve_ctas(values) -> tuple[int, ...]:
  """--ctas values as ints ("sm": the device's SM count; 2 without one, as in
  interpret mode on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  sms = getattr(jax.devices()[0], "core_count", None) or 2
  return tuple(sms if v == "sm" else int(v) for v in values)


def _wall_us(exe, *args) -> float:
  """Wall-clock µs of one call (interpret mode: no device timer)."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  jax.block_until_ready(exe(*args))
  return (time.perf_counter() - t0) * 1e6


def run_shape(shape: str, kv_dtype: str, args) -> list[dict]:
  cmd = [sys.executable, "-m", "benchmarks.decode_mosaic_probe", "--child",
         shape, f"--max-ctas={args.max_ctas}", f"--kv-dtype={kv_dtype}"] + (
             ["--interpret"] if args.interpret else []) + [
             f"--{k.replace('_', '-')}={','.join(map(str, getattr(args, k)))}"
             for k in ("block_kv", "stages", "splits", "qk_8bit", "v_converters",
                       "streams", "ctas", "issuers", "dynamic")]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=args.job_timeout_s, check=False)
    text, status = done.stdout, f"exit {done.returncode}"
    tail = done.stderr[-1500:]
  except subprocess.TimeoutExpired as e:
    text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    status, tail = f"killed after {args.job_timeout_s} s", ""
  rows = [json.loads(l[len(RESULT):]) for l in text.splitlines()
          if l.startswith(RESULT)]
  print(f"== {shape} {kv_dtype}: {status}, {len(rows)} results", flush=True)
  if tail and status != "exit 0":
    print(tail, flush=True)
  return rows


def parser() -> argparse.ArgumentParser:
  """The command line (help texts with the true defaults)."""
  ints = lambda s: tuple(int(x) for x in s.split(","))
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="directory for the JSON and markdown")
  p.add_argument("--shapes", default=",".join(SHAPES),
                 help="batch x context / block size, comma-separated (default: %(default)s)")
  p.add_argument("--block-kv", type=ints, default=(64, 128), help="default: 64,128")
  p.add_argument("--stages", type=ints, default=(2, 3, 4), help="default: 2,3,4")
  p.add_argument("--splits", type=ints, default=(1, 2, 4, 8), help="default: 1,2,4,8")
  p.add_argument("--qk-8bit", type=ints, default=(0, 1),
                 help="8-bit caches: Sᵀ by 8-bit wgmma with q in two terms (1) or K "
                      "converted to bf16 (0), comma-separated (default: 0,1)")
  p.add_argument("--v-converters", type=ints, default=(1, 2),
                 help="8-bit caches: V converter warpgroups (default: 1,2)")
  p.add_argument("--streams", type=ints, default=(1,),
                 help="8-bit caches: KV heads a CTA, 1 or 2 (default: 1)")
  p.add_argument("--ctas", type=lambda x: tuple(x.split(",")), default=("0",),
                 help="8-bit caches: CTAs of the grid, each taking (row, KV head, split) "
                      "items in turn; 0: one an item, sm: the device's SM count "
                      "(default: 0)")
  p.add_argument("--issuers", type=ints, default=(1,),
                 help="8-bit caches: warps of the memory warpgroup issuing the copies, "
                      "1, 2 or 4 (default: 1)")
  p.add_argument("--dynamic", type=ints, default=(0,),
                 help="8-bit caches with --ctas > 0: each CTA's next item from a global "
                      "counter (1) or in static turn (0), comma-separated (default: 0)")
  p.add_argument("--max-ctas", type=int, default=16 * 132,
                 help="skip split counts giving more CTAs (default: %(default)s)")
  tables.add_flags(p, "the best tilings", "decode_mosaic_probe.json")
  p.add_argument("--kv-dtype", type=lambda x: tuple(x.split(",")), default=("bfloat16",),
                 help="KV-cache dtypes, comma-separated: bfloat16, int8, float8_e4m3 "
                      "(default: bfloat16)")
  p.add_argument("--interpret", action="store_true",
                 help="interpret mode, wall-clock times: CPU tests of this script (default: off)")
  p.add_argument("--job_timeout_s", type=int, default=240,
                 help="seconds one shape may take (default: %(default)s)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  return p


def main():
  p = parser()
  args = p.parse_args()
  if args.child:
    child(args)
  elif args.from_run:
    if not args.device_kind:
      p.error("--from-run needs --device-kind")
    print("wrote", table_from_run(args.from_run, args.device_kind, args.table_dir))
  else:
    measure(args)


def measure(args) -> None:
  """Every shape and KV dtype in a child; tables printed, saved under --out
  and, with --write-table, merged into the device's table after each."""
  all_rows, md, summaries = [], [], []
  for shape, kv_dtype in itertools.product(args.shapes.split(","), args.kv_dtype):
    rows = run_shape(shape, kv_dtype, args)
    all_rows += rows
    lines, summary = summarize(shape, kv_dtype, rows)
    md += lines + [""]
    summaries.append(summary)
    print("\n".join(lines), flush=True)
    # NOTE: after every shape, so that a killed run keeps what it measured.
    if args.out:
      save(args.out, all_rows, summaries, md)
    if args.write_table:
      path = write_table(table_entries(summaries[-1:]), args.table_dir)
      if args.out and os.path.dirname(os.path.abspath(path)) != os.path.abspath(args.out):
        shutil.copy(path, args.out)
  print("\n".join(summary_table(summaries)))
  if args.write_table:
    print("wrote", path)


if __name__ == "__main__":
  main()
