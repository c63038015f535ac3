"""Attention kernel time per KV block size (GPU): the block-table indirection cost.

Usage: PYTHONPATH=. python -m benchmarks.block_sizes [--out DIR]
           [--block-sizes 8,16,32,64,128,256] [--batch 64] [--ctx 2048]

For each block size, the same decode problem (Llama-3-8B heads: 32 q / 8 kv of 128, bf16,
`--batch` rows of `--ctx` tokens, blocks shuffled over the cache) and the same prefill
problem (512 new tokens over a `--ctx`-token cached prefix, one sequence) through the
engine's kernels, next to a plain read of the same KV bytes (the bandwidth peer) measured
in the same run. Smaller blocks mean more table lookups and smaller tiles; larger blocks
waste more of each sequence's last block (see docs/case-study.md).
"""
from __future__ import annotations

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from benchmarks.kernels import rel_err, timed

HQ, HKV, D = 32, 8, 128


def paged_problem(key, batch: int, ctx: int, block_size: int):
  """q [batch, HQ, D], a cache of exactly the used blocks (+ null 0), shuffled tables."""
  per_row = -(-ctx // block_size)
  num_blocks = batch * per_row + 1
  k1, k2, k3 = jax.random.split(key, 3)
  kv = jax.random.normal(k1, (num_blocks, HKV, 2, block_size, D), jnp.bfloat16)
  q = jax.random.normal(k2, (batch, HQ, D), jnp.bfloat16)
  tables = (jax.random.permutation(k3, num_blocks - 1) + 1).reshape(batch, per_row)
  return q, kv, tables.astype(jnp.int32), jnp.full((batch,), ctx, jnp.int32)


def bench_block_size(key, block_size: int, batch: int, ctx: int, new: int = 512,
                     backend: str = "triton") -> dict:
  q, kv, tables, lengths = paged_problem(key, batch, ctx, block_size)
  decode = functools.partial(pk.paged_decode_attention, backend=backend)
  err = rel_err(decode(q, kv, tables, lengths),
                pk.paged_decode_attention_reference(q, kv, tables, lengths))
  t_decode = timed(decode, q, kv, tables, lengths)
  t_read = timed(lambda x: jnp.max(x, axis=(1, 2, 3, 4)), kv)
  # Prefill: `new` tokens of row 0 attending over its ctx-token prefix + themselves.
  qp = jax.random.normal(key, (new, HQ, D), jnp.bfloat16)
  _, p_kv, p_tables, _ = paged_problem(key, 1, ctx + new, block_size)
  cu = jnp.array([0, new], jnp.int32)
  kv_lens = jnp.array([ctx + new], jnp.int32)
  prefill = functools.partial(pk.paged_prefill_attention, backend=backend)
  t_prefill = timed(prefill, qp, p_kv, p_tables, cu, kv_lens)
  kv_bytes = batch * ctx * HKV * 2 * D * 2
  flops = 4 * new * (ctx + new / 2) * HQ * D
  return {"block_size": block_size, "decode_us": t_decode, "read_us": t_read,
          "decode_pct_of_read": 100 * t_read / t_decode, "decode_TBps": kv_bytes / t_decode / 1e6,
          "prefill_us": t_prefill, "prefill_TFLOPs": flops / t_prefill / 1e6,
          "decode_rel_err": err}


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default=None)
  ap.add_argument("--block-sizes", default="8,16,32,64,128,256")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--ctx", type=int, default=2048)
  ap.add_argument("--backend", default="triton", help="triton (GPU) or xla (a CPU smoke run)")
  args = ap.parse_args()
  key, rows = jax.random.key(0), []
  for bs in (int(b) for b in args.block_sizes.split(",")):
    rows.append(bench_block_size(key, bs, args.batch, args.ctx, backend=args.backend))
    print(json.dumps(rows[-1]), flush=True)
  print("| block | decode µs | % of read | prefill µs | prefill TFLOP/s |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['block_size']} | {r['decode_us']:.0f} | {r['decode_pct_of_read']:.0f} % | "
          f"{r['prefill_us']:.0f} | {r['prefill_TFLOPs']:.0f} |")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "block_sizes.json"), "w") as f:
      json.dump({"device": str(jax.devices()[0].device_kind), "batch": args.batch,
                 "ctx": args.ctx, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
