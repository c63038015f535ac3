"""Compiles, checks and times the Mosaic GPU prefill kernel's tile variants (GPU).

Usage: PYTHONPATH=. python3 -m benchmarks.mosaic_probe [--out DIR]
           [--variants a,b] [--shapes x,y[@int8|@float8_e4m3]] [--job_timeout_s 150]
           [--write-table [--table-dir DIR]]
       PYTHONPATH=. python3 -m benchmarks.mosaic_probe --from-run JSON
           --device-kind KIND [--table-dir DIR]
       PYTHONPATH=. python3 -m benchmarks.mosaic_probe --preflight
           (the default tiling on benchmarks/kernels.py's problems; exit
           status 1 if any fails, hangs or is wrong)

Each (variant, shape) job runs in a child process that this one watches: a
lowering or compile error, a wrong result (vs the jnp reference, NaN-poisoned
unused cache slots on the odd shapes) or a hang (the child is killed after
--job_timeout_s) is reported for that job, and a new child takes the rest.
A shape named NAME@int8 or NAME@float8_e4m3 stores its cache in that 8-bit
dtype (quantized per token and head): the Mosaic variants then run
prefill_mosaic_q8, and the variant "triton" runs the Triton kernel on any
shape. With --write-table (or --from-run: a recorded run's mosaic_probe.json)
each 8-bit shape where both the default variant and "triton" were right
becomes a "prefill_mosaic_q8" entry of the device's tuning table (both
times): the engine's 8-bit prefill takes the Mosaic kernel only where every
entry of its dtype and head_dim says it is faster (pallas_kernels/prefill.py).

Prints one table per shape (µs, TFLOP/s, % of cuDNN dense causal attention at
4096 tokens, relative error) and the fastest correct variant per shape;
writes mosaic_probe.json / .md under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time

from benchmarks import tables
from pallas_kernels.prefill_mosaic import MosaicConfig

# NOTE: no JAX device work at import: the parent only watches children.
VARIANTS = {
    "default": None,  # heuristics.prefill_mosaic_config: what backend="mosaic" runs
    "bkv64-st2": MosaicConfig(block_kv=64, stages=2),
    "bkv64-st3": MosaicConfig(block_kv=64, stages=3),
    "bkv128-st3": MosaicConfig(block_kv=128, stages=3),
    "rows64": MosaicConfig(compute_wgs=1),
    "rows64-bkv64-st3": MosaicConfig(compute_wgs=1, block_kv=64, stages=3),
    "no-pingpong": MosaicConfig(pingpong=False),
    "p-smem": MosaicConfig(p_in_regs=False),
    "p-smem-bkv64-st3": MosaicConfig(p_in_regs=False, block_kv=64, stages=3),
    "triton": None,  # the Triton kernel with its heuristic tiling
}
# name -> (block_size, hq, hkv, head_dim, q_lens, kv_lens[, padding rows]);
# bf16. Padding 3 unless given: q's rows are then no multiple of 8 and the
# kernel reads gathered tile slots; the 4096 shapes read q in place.
SHAPES = {
    "4096": (16, 32, 8, 128, (4096,), (4096,), 0),
    "4096+2048": (16, 32, 8, 128, (4096,), (6144,), 0),
    "4096-gathered": (16, 32, 8, 128, (4096,), (4096,), 3),
    # group 3, an empty sequence, length 1, chunks ending mid-block:
    "odd-bs16": (16, 12, 4, 128, (100, 0, 37, 1), (100, 0, 600, 77)),
    "odd-bs256": (256, 9, 3, 64, (300, 17), (700, 17)),
    "odd-bs8": (8, 8, 8, 64, (70, 5), (70, 900)),
    "tiny": (16, 4, 2, 64, (20, 0, 3), (20, 0, 40)),  # seconds in interpret mode
}
TOLERANCE = 1e-2  # relative error of bf16 outputs (tests/kernels/helpers.py)
RESULT = "RESULT "


def _jobs(args):
  if args.preflight:
    return [("default", f"kernels-{name}") for name in _kernels_problems()]
  variants = args.variants.split(",") if args.variants else list(VARIANTS)
  shapes = args.shapes.split(",") if args.shapes else list(SHAPES)
  baseline = [] if args.interpret else [("cudnn", "4096")]
  return baseline + [(v, s) for s in shapes for v in variants]


def _kernels_problems():
  """benchmarks/kernels.py's prefill problems, by name (built lazily)."""
  from benchmarks import kernel_checks, kernels  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  problems = {}
  for i, shape in enumerate(kernel_checks.SMALL_SHAPES):
    problems[f"small{i}"] = lambda i=i, shape=shape: kernel_checks.small_problems(
        jax.random.key(i), jnp.bfloat16, shape)[1]
  for prefix in (0, 2048):
    problems[f"4096+{prefix}"] = (
        lambda prefix=prefix: kernels.prefill_problem(key, 4096, prefix))
  return problems


def _problem(shape_name):
  """(args, flops) of a named shape; odd shapes poison unused slots."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks.prefill_baselines import causal_flops  # pylint: disable=g-import-not-at-top
  if shape_name.startswith("kernels-"):
    return _kernels_problems()[shape_name[len("kernels-"):]](), 0.0
  from pallas_kernels import quantization  # pylint: disable=g-import-not-at-top
  shape_name, _, kv_dtype = shape_name.partition("@")
  bs, hq, hkv, d, q_lens, kv_lens, pad = (SHAPES[shape_name] + (3,))[:7]
  need = [-(-n // bs) for n in kv_lens]
  width = max(need) + 1
  key = jax.random.key(1)
  ids = 1 + jax.random.permutation(key, sum(need) + 2)  # 2 spare blocks
  tables, used = [], 0
  for n in need:
    tables.append(jnp.concatenate([ids[used:used + n],
                                   jnp.zeros(width - n, ids.dtype)]))
    used += n
  tables = jnp.stack(tables).astype(jnp.int32)
  kv = jax.random.normal(key, (sum(need) + 3, hkv, 2, bs, d), jnp.bfloat16)
  # Slots past each sequence's length, the null block and spares: NaN.
  pos = jnp.arange(width * bs).reshape(width, bs)
  owned = jnp.zeros((kv.shape[0], bs), bool)
  for s, n in enumerate(kv_lens):
    owned = owned.at[tables[s]].max(pos < n)
  kv = jnp.where(owned[:, None, None, :, None], kv, jnp.nan).astype(jnp.bfloat16)
  if kv_dtype:  # NaN slots quantize to NaN scales
    kv = quantization.QuantizedKV(*quantization.quantize(
        kv, quantization.storage_dtype(kv_dtype)))
  q = jax.random.normal(jax.random.fold_in(key, 1),
                        (sum(q_lens) + pad, hq, d), jnp.bfloat16)
  cu = jnp.concatenate([jnp.zeros(1, jnp.int32),
                        jnp.cumsum(jnp.array(q_lens, jnp.int32))])
  flops = sum(causal_flops(ql, kl - ql, hq, d) for ql, kl in zip(q_lens, kv_lens))
  return (q, kv, tables, cu, jnp.array(kv_lens, jnp.int32)), flops


def _run_job(variant, shape_name, cache, interpret):
  """One job in the child: compile, check against the reference, time."""
  import jax  # pylint: disable=g-import-not-at-top
  import pallas_kernels as pk  # pylint: disable=g-import-not-at-top
  from benchmarks import measure, prefill_baselines  # pylint: disable=g-import-not-at-top
  from pallas_kernels import heuristics  # pylint: disable=g-import-not-at-top
  from pallas_kernels import prefill_mosaic_q8, quantization  # pylint: disable=g-import-not-at-top
  from pallas_kernels.prefill_mosaic import SMEM_BYTES, prefill_mosaic  # pylint: disable=g-import-not-at-top
  if variant == "cudnn":
    row, = prefill_baselines.dense_rows(jax.random.key(0), 4096, measure.timed,
                                        names=("cuDNN dense causal",))
    return dict(status="ok", us=row["us"], tflops=row["tflops"])
  if shape_name not in cache:
    args, flops = _problem(shape_name)
    cache[shape_name] = (args, flops, pk.paged_prefill_attention_reference(*args))
  args, flops, ref = cache[shape_name]
  d = args[0].shape[-1]
  quantized = quantization.is_quantized(args[1])
  cfg = VARIANTS[variant] or heuristics.prefill_mosaic_config(d)
  if variant == "triton":
    fn = jax.jit(lambda *a: pk.paged_prefill_attention(
        *a, scale=d ** -0.5, backend="triton", interpret=interpret))
  elif quantized:
    if not prefill_mosaic_q8.supports(args[0], args[1], cfg):
      return dict(status="skipped", detail="over the shared memory of a CTA")
    fn = jax.jit(lambda *a: prefill_mosaic_q8.prefill_mosaic_q8(
        *a, scale=d ** -0.5, config=cfg, interpret=interpret))
  elif cfg.smem_bytes(d, 2) > SMEM_BYTES:
    return dict(status="skipped", detail="over the shared memory of a CTA")
  else:
    fn = jax.jit(lambda *a: prefill_mosaic(*a, scale=d ** -0.5, config=cfg,
                                           interpret=interpret))
  err = measure.rel_err(fn(*args), ref)  # raises on NaN/inf
  iters = 1 if interpret else 10
  us = measure.timed(fn, *args, iters=iters)
  kernel_us = (None if quantized or variant == "triton" else
               measure.timed(*_kernel_alone(args, cfg, interpret), iters=iters))
  status = "ok" if err < TOLERANCE else "wrong"
  return dict(status=status, err=err, us=us, tflops=flops / us / 1e6,
              kernel_us=kernel_us,
              kernel_tflops=flops / kernel_us / 1e6 if kernel_us else None)


def _kernel_alone(args, config, interpret):
  """(fn, *args): the kernel on prepared inputs, without the XLA work around
  it (make_tiles, gather_slots where the group needs it, scatter_slots)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pallas_kernels import prefill_mosaic as pm  # pylint: disable=g-import-not-at-top
  q, kv, tables, cu, kv_lens = args
  cfg = pm.static_config(q, kv, tables, q.shape[-1] ** -0.5, config, interpret)
  tiles, boxes, qk = pm.kernel_inputs(q, kv, cu, kv_lens, cfg)
  fn = jax.jit(lambda t, x, b, y, c: pm.run_kernel(t, x, b, y, c, cfg, interpret))
  return fn, tiles, boxes, tables, qk, kv


def child(jobs, interpret=False):
  """Runs jobs in order; one RESULT line each (errors with their traceback)."""
  from benchmarks.measure import guarded  # pylint: disable=g-import-not-at-top
  cache = {}
  for variant, shape in jobs:
    print(f"START {variant} {shape}", flush=True)
    r = guarded(lambda: _run_job(variant, shape, cache, interpret), limit=4000)
    if isinstance(r, str):
      print(r, flush=True)
      r = dict(status="error", detail=r.splitlines()[0])
    print(RESULT + json.dumps(dict(variant=variant, shape=shape, **r)),
          flush=True)


def _spawn(jobs, interpret):
  cmd = [sys.executable, "-m", "benchmarks.mosaic_probe", "--child",
         json.dumps(jobs)] + (["--interpret"] if interpret else [])
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1)
  lines = queue.Queue()
  def pump():
    for line in proc.stdout:
      lines.put(line)
    lines.put(None)
  threading.Thread(target=pump, daemon=True).start()
  return proc, lines


def parent(jobs, job_timeout_s, startup_s, interpret=False):
  """Runs jobs in watched children; a hung job is killed and recorded.

  A child gets startup_s more for its first job (JAX and CUDA start-up).
  """
  results, todo = [], list(jobs)
  while todo:
    proc, lines = _spawn(todo, interpret)
    deadline = time.time() + job_timeout_s + startup_s
    while True:
      try:
        line = lines.get(timeout=max(deadline - time.time(), 0.1))
      except queue.Empty:
        proc.kill()
        proc.wait()
        if todo:  # else the child was only slow to exit
          results.append(dict(variant=todo[0][0], shape=todo[0][1],
                              status="hung",
                              detail=f"no result in {job_timeout_s} s; killed"))
          print(f"HUNG {todo[0]}: killed", flush=True)
          todo = todo[1:]
        break
      if line is None:  # the child exited
        if todo:  # before reporting this job: it took the child down
          results.append(dict(variant=todo[0][0], shape=todo[0][1],
                              status="crashed", detail=f"exit {proc.wait()}"))
          todo = todo[1:]
        break
      print(line, end="", flush=True)
      if line.startswith(RESULT):
        results.append(json.loads(line[len(RESULT):]))
        todo = todo[1:]
        deadline = time.time() + job_timeout_s
  return results


def to_markdown(results):
  """One table over shapes x variants, then the best correct variant per shape."""
  cudnn = [r.get("tflops") for r in results if r["variant"] == "cudnn"]
  cudnn = cudnn[0] if cudnn and cudnn[0] else None
  lines = ["| shape | variant | status | µs | TFLOP/s | % of cuDNN | kernel alone µs "
           "| kernel TFLOP/s (% of cuDNN) | rel. error |",
           "|---|---|---|---|---|---|---|---|---|"]
  best = {}
  for r in results:
    tf = r.get("tflops")
    pct = f"{100 * tf / cudnn:.0f}%" if tf and cudnn else "-"
    err = r.get("err")
    lines.append(
        f"| {r['shape']} | {r['variant']} | {r['status'] if 'status' in r else 'ok'}"
        f"{' (' + r['detail'] + ')' if r.get('detail') else ''} | "
        f"{r.get('us', math.nan):.1f} | {tf or 0:.0f} | {pct} | "
        f"{_kernel_cell(r, cudnn)} | {'-' if err is None else f'{err:.1e}'} |")
    ours = r["variant"] != "cudnn"
    if ours and r.get("status") == "ok" and tf and tf > best.get(
        r["shape"], (0, ""))[0]:
      best[r["shape"]] = (tf, r["variant"])
  lines.append("")
  for shape, (tf, variant) in best.items():
    pct = f" ({100 * tf / cudnn:.0f}% of cuDNN)" if cudnn else ""
    lines.append(f"best {shape}: {variant} {tf:.0f} TFLOP/s{pct}")
  return "\n".join(lines)


def q8_entries(results) -> list[dict]:
  """The "prefill_mosaic_q8" table entries of a run: per 8-bit shape with a
  right default and triton result, both times."""
  ok = {(r["variant"], r["shape"]): r for r in results if r.get("status") == "ok"}
  entries = []
  for (variant, shape), r in ok.items():
    name, _, kv_dtype = shape.partition("@")
    if variant != "default" or not kv_dtype or ("triton", shape) not in ok:
      continue
    bs, _, _, d = SHAPES[name][:4]
    entries.append(dict(shape=shape, kv_cache_dtype=kv_dtype, head_dim=d,
                        block_size=bs, us=round(r["us"], 1),
                        triton_us=round(ok["triton", shape]["us"], 1),
                        err=r["err"]))
  return entries


def write_table(entries, table_dir=None, device_kind=None, source="") -> str:
  """Replaces the "prefill_mosaic_q8" entries of the device's table (this
  process's device unless given) with `entries`; the other keys kept."""
  return tables.update("prefill_mosaic_q8", lambda old: entries,
                       "benchmarks.mosaic_probe", table_dir, device_kind, source)


def _kernel_cell(r, cudnn):
  """'µs | TFLOP/s (% of cuDNN)' of the kernel alone, '- | -' if not timed."""
  if not r.get("kernel_us"):
    return "- | -"
  tf = r.get("kernel_tflops") or 0
  pct = f" ({100 * tf / cudnn:.0f}%)" if tf and cudnn else ""
  return f"{r['kernel_us']:.1f} | {tf:.0f}{pct}"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--variants", default="", help="comma list of VARIANTS")
  parser.add_argument("--shapes", default="", help="comma list of SHAPES")
  parser.add_argument("--job_timeout_s", type=float, default=150)
  parser.add_argument("--startup_s", type=float, default=120)
  parser.add_argument("--preflight", action="store_true")
  parser.add_argument("--interpret", action="store_true",
                      help="Mosaic GPU interpret mode (a CPU smoke run)")
  tables.add_flags(parser, "the 8-bit shapes' prefill_mosaic_q8 entries",
                   "mosaic_probe.json")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child is not None:
    child([tuple(j) for j in json.loads(args.child)], args.interpret)
    return 0
  if args.from_run:
    if not args.device_kind:
      parser.error("--from-run needs --device-kind")
    with open(args.from_run) as f:
      entries = q8_entries(json.load(f))
    print(write_table(entries, args.table_dir, args.device_kind, args.from_run))
    return 0
  results = parent(_jobs(args), args.job_timeout_s, args.startup_s,
                   args.interpret)
  md = to_markdown(results)
  print(md, flush=True)
  if args.write_table:
    print("table:", write_table(q8_entries(results), args.table_dir), flush=True)
  if args.out:
    name = "mosaic_preflight" if args.preflight else "mosaic_probe"
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
      f.write(md + "\n")
  failed = [r for r in results
            if r["variant"] != "cudnn" and r.get("status") not in ("ok", "skipped")]
  return 1 if args.preflight and failed else 0


if __name__ == "__main__":
  sys.exit(main())
