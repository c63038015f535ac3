"""Measures the paged-decode kernel's tiling on the GPU at hand (run on an H100/H200).

Usage: PYTHONPATH=. python -m benchmarks.tune_kernels --out DIR [--budget_s 330]

A shape class is (batch, span, heads, block size): the engine's block tables are
as wide as its context limit (`span` tokens) whatever the rows' real lengths, so
the kernel is compiled once per span and must be good for short rows too. For
each class it compiles every (num_splits, pages_per_step, num_warps, num_stages)
of a grid on a thread pool (XLA releases the GIL while it compiles), times each
one (CUPTI kernel time, median of 20 calls) with every row at span/16, span/4
and span tokens, each next to a read-only pass over the KV bytes those rows
hold, and keeps the configuration with the lowest geometric mean of its time
over the best time at each length. It checks that one against the float32
reference and prints a table per class against the shape heuristic. Writes
`tune_decode.json` (every measurement) under --out, and with --write-table the
device's table `pallas_kernels/tuning/<device>.json` that the kernels read
(pallas_kernels/tuning.py).
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

# (batch, span, q_heads, kv_heads, head_dim, block_size): the first six are the default
# serving configuration's (4,096-token context), then issue 14's four decode shapes, the
# throughput benchmark's 512-token engines, and larger blocks.
SHAPES = tuple((b, 4096, 32, 8, 128, 16) for b in (1, 8, 32, 64, 128, 256)) + (
    (64, 2048, 32, 8, 128, 16), (8, 8192, 32, 8, 128, 16), (256, 1024, 32, 8, 128, 16),
    (64, 512, 32, 8, 128, 16), (256, 512, 32, 8, 128, 16),
    (64, 2048, 32, 8, 128, 64), (64, 2048, 32, 8, 128, 128))
LENGTH_FRACTIONS = (16, 4, 1)     # rows at span / f tokens
GRID = dict(num_splits=(1, 2, 4, 8, 16), tokens_per_step=(32, 64, 128, 256),
            num_warps=(4, 8), num_stages=(2, 3, 4))


def timed_compiled(exe, *args, iters=20):
  """Median CUPTI kernel time in µs of a `jax.stages.Compiled` (all its kernels summed)."""
  from jax.experimental.mosaic.gpu import profiler  # pylint: disable=g-import-not-at-top
  _, times = profiler.measure(exe, iterations=iters)(*args)
  return float(np.median(times)) * 1e3


def make_problem(key, batch, ctx, hq, hkv, d, bs):
  """Random paged problem, shuffled tables as wide as `ctx`, the cache holds the used
  blocks + null; every row `ctx` tokens long (`with_length` shortens them)."""
  bpr = ctx // bs
  nb = batch * bpr + 1
  k1, k2, k3 = jax.random.split(key, 3)
  kv = jax.random.normal(k1, (nb, hkv, 2, bs, d), jnp.bfloat16)
  q = jax.random.normal(k2, (batch, hq, d), jnp.bfloat16)
  tables = (jax.random.permutation(k3, nb - 1) + 1).reshape(batch, bpr).astype(jnp.int32)
  return q, kv, tables, jnp.full((batch,), ctx, jnp.int32)


def with_length(args, length: int):
  """The same problem with every row `length` tokens long (the table stays as wide)."""
  q, kv, tables, lengths = args
  return q, kv, tables, jnp.full_like(lengths, length)


def lengths_of(span: int, bs: int) -> list[int]:
  """The row lengths a class is timed at: span / f for `LENGTH_FRACTIONS`, at least a block."""
  return sorted({max(bs, span // f) for f in LENGTH_FRACTIONS})


def read_us(kv, batch: int, length: int, bs: int) -> float:
  """A read-only pass over the blocks `batch` rows of `length` tokens hold (an
  array cache, or a QuantizedKV's values and scales)."""
  used = [x[:batch * (-(-length // bs)) + 1] for x in jax.tree.leaves(kv)]

  def words(x):  # NOTE: XLA reduces 8-bit elements far below the bandwidth
    if x.dtype.itemsize == 1:
      x = jax.lax.bitcast_convert_type(x.reshape(x.shape[:-1] + (-1, 4)), jnp.uint32)
    return x
  return timed(lambda *xs: [jnp.max(words(x), axis=tuple(range(1, x.ndim)))
                            for x in xs], *used)


def pick(rows: list[dict]) -> dict:
  """The row whose times over the best time at each length have the lowest geometric mean."""
  ok = [r for r in rows if r["error"] is None]
  best = [min(r["us"][i] for r in ok) for i in range(len(ok[0]["us"]))]
  for r in ok:
    r["score"] = float(np.exp(np.mean(np.log(np.array(r["us"]) / np.array(best)))))
  return min(ok, key=lambda r: r["score"])


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
  batch, span, hq, hkv, d, bs = shape
  args = make_problem(key, batch, span, hq, hkv, d, bs)
  max_blocks = args[2].shape[1]
  heur = heuristic_config(batch, hkv, max_blocks, bs, d)
  cfgs = [heur] + [c for c in configs(bs, max_blocks) if c != heur]
  t0 = time.time()
  compiled = compile_all(args, cfgs, threads)
  compile_s = time.time() - t0
  lengths = lengths_of(span, bs)
  reads = [read_us(args[1], batch, n, bs) for n in lengths]
  rows = []
  for cfg, exe in zip(cfgs, compiled):
    if time.time() > deadline and len(rows) > 1:
      break
    error = exe if isinstance(exe, str) else None
    us = [float("nan")] * len(lengths) if error else [
        timed_compiled(exe, *with_length(args, n)) for n in lengths]
    rows.append(dict(cfg=cfg, us=us, pct=[100 * r / u if u == u else 0.0
                                          for r, u in zip(reads, us)], error=error))
  best = pick(rows)
  f = jax.jit(functools.partial(decode_triton, scale=0.1, **best["cfg"]))
  err = max(rel_err(f(*with_length(args, n)),
                    pk.paged_decode_attention_reference(*with_length(args, n), scale=0.1))
            for n in lengths)
  return dict(shape=dict(zip(("batch", "context", "q_heads", "kv_heads", "head_dim",
                              "block_size"), shape)),
              lengths=lengths, read_us=reads, heuristic=rows[0], best=best, best_rel_err=err,
              compile_s=compile_s, all=rows)


def table(device_kind, results, date):
  """The tuning table (pallas_kernels/tuning.py's format) of these results."""
  entries = []
  for r in results:
    s, b = r["shape"], r["best"]
    entries.append(dict(batch=s["batch"], context=s["context"], kv_heads=s["kv_heads"],
                        q_heads=s["q_heads"], head_dim=s["head_dim"],
                        block_size=s["block_size"], itemsize=2, **b["cfg"],
                        lengths=r["lengths"], us=[round(u, 1) for u in b["us"]],
                        pct_of_read=[round(p, 1) for p in b["pct"]],
                        heuristic_us=[round(u, 1) for u in r["heuristic"]["us"]]))
  return dict(device_kind=device_kind, measured=date, jax=jax.__version__,
              command="python -m benchmarks.tune_kernels --write-table", decode=entries)


def merged(new, old, block_sizes):
  """`new`'s entries for `block_sizes` and `old`'s for every other block size."""
  kept = [e for e in old.get("decode", []) if e["block_size"] not in block_sizes]
  note = f"; block sizes {sorted(block_sizes)} re-measured {new['measured']}"
  return dict(new, decode=kept + new["decode"],
              command=old.get("command", new["command"]) + note)


def write_table(tbl):
  path = tuning.TABLE_DIR / f"{tuning.device_slug(tbl['device_kind'])}.json"
  path.parent.mkdir(exist_ok=True)
  path.write_text(json.dumps(tbl, indent=1) + "\n")
  print("wrote", path)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="folder for tune_decode.json (default: none)")
  parser.add_argument("--budget_s", type=float, default=330.0,
                      help="stop timing new configurations after this many seconds (default 330)")
  parser.add_argument("--write-table", action="store_true",
                      help="write pallas_kernels/tuning/<device>.json from the results (default: off)")
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 4,
                      help="compile threads (default: the number of cores)")
  parser.add_argument("--block-sizes", default="",
                      help="comma list: tune only the classes of these block sizes, and with "
                           "--write-table replace only their entries (default: every class)")
  args = parser.parse_args()
  deadline = time.time() + args.budget_s
  kind = jax.devices()[0].device_kind
  print(kind, jax.__version__, flush=True)
  results = []
  only = {int(b) for b in args.block_sizes.split(",") if b}
  for shape in SHAPES:
    if only and shape[-1] not in only:
      continue
    if time.time() > deadline:
      print("deadline: skipping", shape)
      continue
    r = tune_shape(jax.random.key(len(results)), shape, args.threads, deadline)
    results.append(r)
    b, h = r["best"], r["heuristic"]
    print(json.dumps(dict(shape=shape, lengths=r["lengths"],
                          read_us=[round(x, 1) for x in r["read_us"]],
                          heuristic=([round(u, 1) for u in h["us"]], h["cfg"]),
                          best=([round(u, 1) for u in b["us"]], b["cfg"]),
                          err=r["best_rel_err"], compile_s=round(r["compile_s"], 1))),
          flush=True)
  print("\n| class (b x span, bs) | row lengths | read-only µs | heuristic µs | best µs "
        "(% of read-only) | best config |")
  print("|---|---|---|---|---|---|")
  for r in results:
    s, b, h = r["shape"], r["best"], r["heuristic"]
    j = lambda xs, fmt="{:.1f}": " / ".join(fmt.format(x) for x in xs)
    print(f"| {s['batch']}x{s['context']} bs{s['block_size']} | {j(r['lengths'], '{}')} | "
          f"{j(r['read_us'])} | {j(h['us'])} | {j(b['us'])} ({j(b['pct'], '{:.0f}')}) | "
          f"{b['cfg']} |")
  if args.out:
    with open(os.path.join(args.out, "tune_decode.json"), "w") as f:
      json.dump(dict(device=kind, jax=jax.__version__, results=results), f, indent=1)
  if args.write_table:
    tbl = table(kind, results, time.strftime("%Y-%m-%d"))
    if only:
      tbl = merged(tbl, tuning.load_table(kind), only)
    path = write_table(tbl)
    if args.out:
      shutil.copy(path, args.out)


if __name__ == "__main__":
  main()
