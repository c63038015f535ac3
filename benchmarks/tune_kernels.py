"""Measures the paged-decode kernel's tiling on the GPU at hand (run on an H100/H200).

Usage: PYTHONPATH=. python -m benchmarks.tune_kernels --out DIR [--budget_s 300]

For each shape class (batch x context, heads, block size) it compiles every
(num_splits, pages_per_step, num_warps, num_stages) of a grid on a thread pool
(XLA releases the GIL while it compiles), times each one (CUPTI kernel time,
median of 20 calls) next to a read-only pass over the same KV bytes, checks
the best one against the float32 reference, and prints a table of the best
configuration per shape against the shape heuristic. Writes `tune_decode.json`
(every measurement) under --out, and with --write-table the device's table
`pallas_kernels/tuning/<device>.json` that the kernels read (pallas_kernels/tuning.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import itertools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks.kernels import rel_err, timed
from pallas_kernels import heuristics, tuning
from pallas_kernels.decode_triton import decode_triton

# (batch, context, q_heads, kv_heads, head_dim, block_size)
SHAPES = ((64, 2048, 32, 8, 128, 16), (8, 8192, 32, 8, 128, 16),
          (32, 4096, 32, 8, 128, 16), (256, 1024, 32, 8, 128, 16),
          (64, 4096, 32, 8, 128, 16), (64, 2048, 32, 8, 128, 64),
          (64, 2048, 32, 8, 128, 128))
GRID = dict(num_splits=(1, 2, 4, 8, 16), tokens_per_step=(32, 64, 128, 256),
            num_warps=(4, 8), num_stages=(2, 3, 4))


def timed_compiled(exe, *args, iters=20):
  """Median CUPTI kernel time in µs of a `jax.stages.Compiled` (all its kernels summed)."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  _, times = profiler.measure(exe, iterations=iters)(*args)
  return float(np.median(times)) * 1e3


def make_problem(key, batch, ctx, hq, hkv, d, bs):
  """Random paged problem, shuffled tables, the cache holds the used blocks + null."""
  bpr = ctx // bs
  nb = batch * bpr + 1
  k1, k2, k3 = jax.random.split(key, 3)
  kv = jax.random.normal(k1, (nb, hkv, 2, bs, d), jnp.bfloat16)
  q = jax.random.normal(k2, (batch, hq, d), jnp.bfloat16)
  tables = (jax.random.permutation(k3, nb - 1) + 1).reshape(batch, bpr).astype(jnp.int32)
  return q, kv, tables, jnp.full((batch,), ctx, jnp.int32)


def configs(bs, max_blocks):
  """The grid's distinct configurations with at least one step per split."""
  seen = []
  for ns, tok, w, st in itertools.product(*GRID.values()):
    cfg = dict(num_splits=ns, pages_per_step=max(1, tok // bs), num_warps=w, num_stages=st)
    if ns * cfg["pages_per_step"] <= max_blocks and cfg not in seen:
      seen.append(cfg)
  return seen


def heuristic_config(batch, hkv, max_blocks, bs, d):
  pages = heuristics.decode_pages_per_step(bs)
  return dict(num_splits=heuristics.decode_num_splits(batch, hkv, max_blocks, bs),
              pages_per_step=pages, num_warps=4,
              num_stages=heuristics.num_stages(pages * bs, d, 2))


def compile_all(args, cfgs, threads):
  """{index: compiled executable or error text}, compiled on a thread pool."""
  def one(cfg):
    f = jax.jit(functools.partial(decode_triton, scale=0.1, **cfg))
    try:
      return f.lower(*args).compile()
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {str(e)[:200]}"
  with cf.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(one, cfgs))


def tune_shape(key, shape, threads, deadline):
  batch, ctx, hq, hkv, d, bs = shape
  args = make_problem(key, batch, ctx, hq, hkv, d, bs)
  max_blocks = args[2].shape[1]
  heur = heuristic_config(batch, hkv, max_blocks, bs, d)
  cfgs = [heur] + [c for c in configs(bs, max_blocks) if c != heur]
  t0 = time.time()
  compiled = compile_all(args, cfgs, threads)
  compile_s = time.time() - t0
  t_read = timed(lambda x: jnp.max(x, axis=(1, 2, 3, 4)), args[1])
  rows = []
  for cfg, exe in zip(cfgs, compiled):
    if time.time() > deadline:
      break
    us = timed_compiled(exe, *args) if not isinstance(exe, str) else float("nan")
    rows.append(dict(cfg=cfg, us=us, pct=100 * t_read / us if us == us else 0.0,
                     error=exe if isinstance(exe, str) else None))
  ok = [r for r in rows if r["error"] is None]
  best = min(ok, key=lambda r: r["us"])
  ref = pk.paged_decode_attention_reference(*args, scale=0.1)
  err = rel_err(jax.jit(functools.partial(decode_triton, scale=0.1, **best["cfg"]))(*args), ref)
  return dict(shape=dict(zip(("batch", "context", "q_heads", "kv_heads", "head_dim",
                              "block_size"), shape)),
              read_us=t_read, heuristic=rows[0], best=best, best_rel_err=err,
              compile_s=compile_s, all=rows)


def table(device_kind, results, date):
  """The tuning table (pallas_kernels/tuning.py's format) of these results."""
  entries = []
  for r in results:
    s, b = r["shape"], r["best"]
    entries.append(dict(batch=s["batch"], context=s["context"], kv_heads=s["kv_heads"],
                        q_heads=s["q_heads"], head_dim=s["head_dim"],
                        block_size=s["block_size"], itemsize=2, **b["cfg"],
                        us=round(b["us"], 1), pct_of_read=round(b["pct"], 1),
                        heuristic_us=round(r["heuristic"]["us"], 1)))
  return dict(device_kind=device_kind, measured=date, jax=jax.__version__,
              command="python -m benchmarks.tune_kernels --write-table", decode=entries)


def write_table(tbl):
  path = tuning.TABLE_DIR / f"{tuning.device_slug(tbl['device_kind'])}.json"
  path.parent.mkdir(exist_ok=True)
  path.write_text(json.dumps(tbl, indent=1) + "\n")
  print("wrote", path)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="folder for tune_decode.json (default: none)")
  parser.add_argument("--budget_s", type=float, default=300.0,
                      help="stop timing new configurations after this many seconds (default 300)")
  parser.add_argument("--write-table", action="store_true",
                      help="write pallas_kernels/tuning/<device>.json from the results (default: off)")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 4,
                      help="compile threads (default: the number of cores)")
  args = parser.parse_args()
  deadline = time.time() + args.budget_s
  kind = jax.devices()[0].device_kind
  print(kind, jax.__version__, flush=True)
  results = []
  for shape in SHAPES:
    if time.time() > deadline:
      print("deadline: skipping", shape)
      continue
    r = tune_shape(jax.random.key(len(results)), shape, args.threads, deadline)
    results.append(r)
    b, h = r["best"], r["heuristic"]
    print(json.dumps(dict(shape=shape, read_us=round(r["read_us"], 1),
                          heuristic=(round(h["us"], 1), round(h["pct"]), h["cfg"]),
                          best=(round(b["us"], 1), round(b["pct"]), b["cfg"]),
                          err=r["best_rel_err"], compile_s=round(r["compile_s"], 1))),
          flush=True)
  print("\n| shape (b x ctx, bs) | read-only µs | heuristic µs (%) | best µs (%) | best config |")
  print("|---|---|---|---|---|")
  for r in results:
    s, b, h = r["shape"], r["best"], r["heuristic"]
    print(f"| {s['batch']}x{s['context']} bs{s['block_size']} | {r['read_us']:.1f} | "
          f"{h['us']:.1f} ({h['pct']:.0f}%) | {b['us']:.1f} ({b['pct']:.0f}%) | "
          f"{b['cfg']} |")
  if args.out:
    with open(os.path.join(args.out, "tune_decode.json"), "w") as f:
      json.dump(dict(device=kind, jax=jax.__version__, results=results), f, indent=1)
  if args.write_table:
    path = write_table(table(kind, results, time.strftime("%Y-%m-%d")))
    if args.out:
      shutil.copy(path, args.out)


if __name__ == "__main__":
  main()
