"""GPU benchmark of the 8-bit KV caches (run on an H100/H200; about 3 minutes).

Usage: PYTHONPATH=. python3 -m benchmarks.kv_quant --out $OUT [--budget_s 200]

1. Decode kernel time per KV-cache dtype (bfloat16, int8, float8_e4m3) at 64 x 4096
   and 256 x 1024 (block 16, 32 q / 8 KV heads x 128): the tiling the engine picks
   (pallas_kernels/tuning.py: the device's table for bf16, the heuristics for 8-bit)
   and the best of a small grid compiled on a thread pool, each next to a read-only
   pass over the bytes that dtype's kernel reads (values, and scales for 8-bit), timed
   in the same run (CUPTI kernel time, median of 20). Target: 8-bit <= 0.6 x bf16.
   Self-check: every kernel's output against the float32 reference over the SAME
   stored cache (rel. error < 1e-2), else the row says FAIL and the exit code is 1.
2. Llama-3-8B's 2,000-token requests that fit per dtype in this device's memory
   (0.85 of what is free after 16 GB of bf16 weights, engine/kv_layout.py's
   bytes_per_block), each cache allocated on the device to prove it fits.

Writes kv_quant.json, kv_quant.md and decode_8bit_table_entries.json (tuning-table
entries in pallas_kernels/tuning/'s format, itemsize 1) under --out.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks.measure import rel_err, timed
from benchmarks.tune_kernels import make_problem, timed_compiled
from engine import kv_layout
from pallas_kernels import quantization, tuning
from pallas_kernels.decode_triton import decode_triton

SHAPES = ((64, 4096), (256, 1024))       # (batch, context)
HQ, HKV, D, BS = 32, 8, 128, 16
DTYPES = ("bfloat16", "int8", "float8_e4m3")
GRID = dict(tokens_per_step=(64, 128, 256), num_warps=(4, 8), num_stages=(2, 3))
TOLERANCE = 1e-2
TARGET = 0.6
REQUEST_TOKENS = 2000
MEMORY_FRACTION = 0.85


def cache_of(kv, dtype: str):
  """The bf16 problem's cache stored as `dtype` (8-bit: quantized per token and head)."""
  if dtype == "bfloat16":
    return kv
  return pk.QuantizedKV(*quantization.quantize(kv, quantization.storage_dtype(dtype)))


def default_config(q, cache, tables) -> dict:
  """The tiling `paged_decode_attention` runs (pallas_kernels/decode.py)."""
  values = quantization.values_of(cache)
  cfg = tuning.decode_config(jax.devices()[0].device_kind, q.shape[0], HKV, tables.shape[1],
                             BS, D, values.dtype.itemsize)
  return dict(num_splits=cfg.num_splits, pages_per_step=cfg.pages_per_step,
              num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def grid(default: dict) -> list[dict]:
  cfgs = [default]
  for tok, w, st in itertools.product(*GRID.values()):
    cfg = dict(default, pages_per_step=tok // BS, num_warps=w, num_stages=st)
    if cfg not in cfgs:
      cfgs.append(cfg)
  return cfgs


def compile_all(args, cfgs):
  def one(cfg):
    f = jax.jit(functools.partial(decode_triton, scale=D ** -0.5, **cfg))
    try:
      return f.lower(*args).compile()
    except Exception as e:  # pylint: disable=broad-except
      return f"{type(e).__name__}: {str(e)[:200]}"
  with cf.ThreadPoolExecutor(os.cpu_count() or 4) as pool:
    return list(pool.map(one, cfgs))


def read_us(cache) -> float:
  """A read-only pass over every byte the kernel reads (the cache holds only used blocks)."""
  leaves = jax.tree_util.tree_leaves(cache)
  return timed(lambda *xs: [jnp.max(x, axis=tuple(range(1, x.ndim))) for x in xs], *leaves)


def bench_dtype(q, kv, tables, lengths, dtype, deadline) -> dict:
  cache = cache_of(kv, dtype)
  args = (q, cache, tables, lengths)
  ref = pk.paged_decode_attention_reference(*args)
  default = default_config(q, cache, tables)
  cfgs = grid(default) if time.time() < deadline else [default]
  compiled = compile_all(args, cfgs)
  t_read = read_us(cache)
  rows = []
  for cfg, exe in zip(cfgs, compiled):
    if isinstance(exe, str):
      rows.append(dict(cfg=cfg, us=float("nan"), error=exe))
      continue
    rows.append(dict(cfg=cfg, us=timed_compiled(exe, *args), err=rel_err(exe(*args), ref)))
  ok = [r for r in rows if "error" not in r]
  best = min(ok, key=lambda r: r["us"])
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache))
  return dict(dtype=dtype, bytes=nbytes, read_us=t_read, default=rows[0], best=best,
              max_err=max(r["err"] for r in ok), all=rows,
              quant_err_vs_bf16=rel_err(ref, pk.paged_decode_attention_reference(
                  q, kv, tables, lengths)))


def bench_decode(deadline) -> list[dict]:
  out = []
  for batch, ctx in SHAPES:
    q, kv, tables, lengths = make_problem(jax.random.key(batch), batch, ctx, HQ, HKV, D, BS)
    base = None
    for dtype in DTYPES:
      r = dict(shape=f"{batch}x{ctx}", batch=batch, context=ctx,
               **bench_dtype(q, kv, tables, lengths, dtype, deadline))
      base = base or r
      r["default_vs_bf16"] = r["default"]["us"] / base["default"]["us"]
      r["best_vs_bf16"] = r["best"]["us"] / base["default"]["us"]
      r["ok"] = bool(r["max_err"] < TOLERANCE)
      out.append(r)
      print(json.dumps({k: v for k, v in r.items() if k != "all"}), flush=True)
  return out


def llama8b():
  from models.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from models.weights.layout import expected_shape, param_entries  # pylint: disable=g-import-not-at-top
  from models.weights.random_init import config_path  # pylint: disable=g-import-not-at-top
  config = ModelConfig.from_json(config_path("llama3-8b"))
  weights = sum(int(np.prod(expected_shape(config, p))) * 2 for p, _, _ in param_entries(config))
  return config, weights


def bench_memory() -> list[dict]:
  """2,000-token requests of Llama-3-8B per dtype in this device's free memory."""
  config, weights = llama8b()
  stats = jax.devices()[0].memory_stats() or {}
  free = stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0)
  budget = int((free - weights) * MEMORY_FRACTION)
  per_request = kv_layout.cdiv(REQUEST_TOKENS, BS)
  rows = []
  for dtype in DTYPES:
    per_block = kv_layout.bytes_per_block(config, BS, dtype)
    num_blocks = budget // per_block + 1
    row = dict(dtype=dtype, budget_gib=budget / 2**30, bytes_per_block=per_block,
               num_blocks=num_blocks, requests=(num_blocks - 1) // per_request)
    try:
      cache = quantization.empty(kv_layout.cache_shape(config, num_blocks, BS), dtype)
      jax.block_until_ready(cache)
      row["allocated_gib"] = sum(x.size * x.dtype.itemsize
                                 for x in jax.tree_util.tree_leaves(cache)) / 2**30
      del cache
    except Exception as e:  # pylint: disable=broad-except
      row["allocated_gib"] = f"FAILED: {type(e).__name__}: {str(e)[:200]}"
    row["vs_bf16"] = row["requests"] / rows[0]["requests"] if rows else 1.0
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def markdown(decode, memory) -> str:
  lines = ["| shape | KV dtype | MB read | read-only µs | engine's tiling µs (% of read) "
           "| vs bf16 | best µs (config) | best vs bf16 | max rel. err | quant. err vs bf16 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in decode:
    d, b = r["default"], r["best"]
    cfg = "{num_splits}/{pages_per_step}/{num_warps}/{num_stages}".format(**b["cfg"])
    lines.append(
        f"| {r['shape']} | {r['dtype']} | {r['bytes'] / 1e6:.0f} | {r['read_us']:.1f} | "
        f"{d['us']:.1f} ({100 * r['read_us'] / d['us']:.0f}%) | {r['default_vs_bf16']:.2f} | "
        f"{b['us']:.1f} ({cfg}) | {r['best_vs_bf16']:.2f} | {r['max_err']:.1e}"
        f"{'' if r['ok'] else ' FAIL'} | {r['quant_err_vs_bf16']:.1e} |")
  lines += ["", "config = splits/pages per step/warps/stages; target <= "
            f"{TARGET} x bf16", "", "| KV dtype | bytes per block (8B, 16 tokens) | blocks "
            f"| {REQUEST_TOKENS}-token requests | vs bf16 | allocated GiB |", "|---|---|---|---|---|---|"]
  for m in memory:
    alloc = m["allocated_gib"]
    alloc = f"{alloc:.1f}" if isinstance(alloc, float) else alloc
    lines.append(f"| {m['dtype']} | {m['bytes_per_block']} | {m['num_blocks']} | "
                 f"{m['requests']} | {m['vs_bf16']:.2f} | {alloc} |")
  return "\n".join(lines)


def table_entries(decode) -> list[dict]:
  """The best 8-bit configs as tuning-table entries (pallas_kernels/tuning.py)."""
  return [dict(batch=r["batch"], context=r["context"], kv_heads=HKV, q_heads=HQ, head_dim=D,
               block_size=BS, itemsize=1, **r["best"]["cfg"], us=round(r["best"]["us"], 1),
               pct_of_read=round(100 * r["read_us"] / r["best"]["us"], 1),
               heuristic_us=round(r["default"]["us"], 1), kv_cache_dtype=r["dtype"])
          for r in decode if r["dtype"] != "bfloat16"]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="output folder (default: none)")
  parser.add_argument("--budget_s", type=float, default=200.0,
                      help="after this many seconds only the engine's tiling is timed "
                           "(default: 200)")
  args = parser.parse_args()
  deadline = time.time() + args.budget_s
  print(jax.devices()[0].device_kind, jax.__version__, flush=True)
  decode = bench_decode(deadline)
  memory = bench_memory()
  text = markdown(decode, memory)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kv_quant.json"), "w") as f:
      json.dump(dict(device=jax.devices()[0].device_kind, decode=decode, memory=memory), f,
                indent=1)
    with open(os.path.join(args.out, "kv_quant.md"), "w") as f:
      f.write(text + "\n")
    with open(os.path.join(args.out, "decode_8bit_table_entries.json"), "w") as f:
      json.dump(table_entries(decode), f, indent=1)
  return 0 if all(r["ok"] for r in decode) else 1


if __name__ == "__main__":
  sys.exit(main())
