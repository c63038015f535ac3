"""GPU benchmark of tensor parallelism: decode step time of a Llama-3-8B-shaped model.

Usage: PYTHONPATH=. python -m benchmarks.tp [--tp 1 2] [--batch 64 256] [--context 1024]
           [--out DIR]

Random bf16 weights (the llama3-8b shape: 32 layers, 32 q / 8 kv heads of 128,
hidden 4096, MLP 14336, vocab 128256) are generated on the devices already
sharded (no host copy). For each tensor-parallel degree and batch it runs the
engine's own jitted decode step (`engine.steps.make_steps` with the TP mesh,
the paged-attention kernels in shard_map, greedy sampling) over a synthetic
schedule: `batch` sequences, each `context` tokens long in its own blocks.
Step time = wall time of `iters` chained steps (cache donated step to step)
divided by `iters`; throughput = batch / step time (generated tokens/s).
Scaling efficiency = (step time at TP 1 / step time at TP N) / N.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from engine import packing, parallel
from engine.sampler import SamplingTensors
from engine.sampling_params import SamplingParams
from engine.step_inputs import DecodeInputs
from engine.steps import make_steps
from models import ModelConfig, RopeScaling
from models.fused import fuse_projections
from models.weights.random_init import random_params

BLOCK_SIZE = 16

LLAMA3_8B = ModelConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
    num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), max_position_embeddings=8192,
    eos_token_ids=(128001,))


def sharded_random_params(config: ModelConfig, mesh, dtype=jnp.bfloat16, seed: int = 0):
  """Normal(0, 0.02) params (unit norm scales) created on the devices in their sharding.

  NOTE: one small jit per leaf (cached per shape and sharding), never the whole
  model in one program: XLA took minutes to compile the 8B init as one jit.
  """
  groups = 1 if mesh is None else mesh.size       # the engine serves fused projections
  abstract = jax.eval_shape(lambda: fuse_projections(random_params(config, dtype), config, groups))
  shardings = (parallel.param_shardings(abstract, mesh) if mesh is not None
               else jax.tree_util.tree_map(lambda _: None, abstract))
  leaves, tree = jax.tree_util.tree_flatten(abstract)
  key, jitted, out = jax.random.key(seed), {}, []
  for i, (leaf, sharding) in enumerate(zip(leaves, tree.flatten_up_to(shardings))):
    if sharding not in jitted:
      jitted[sharding] = jax.jit(_random_leaf, static_argnames=("shape", "dtype", "ones"),
                                 out_shardings=sharding)
    out.append(jitted[sharding](jax.random.fold_in(key, i), shape=leaf.shape, dtype=dtype,
                                ones=leaf.ndim == 1))
  return jax.tree_util.tree_unflatten(tree, out)


def _random_leaf(key, *, shape, dtype, ones: bool):
  if ones:
    return jnp.ones(shape, dtype)
  return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def decode_inputs(batch: int, context: int, num_slots: int) -> DecodeInputs:
  """A synthetic decode schedule: row i owns blocks [1 + i*w, 1 + (i+1)*w)."""
  width = -(-context // BLOCK_SIZE)
  tables = (1 + np.arange(batch * width, dtype=np.int32)).reshape(batch, width)
  pos = np.full(batch, context - 1, np.int32)
  slots = tables[:, (context - 1) // BLOCK_SIZE] * BLOCK_SIZE + (context - 1) % BLOCK_SIZE
  sampling = SamplingTensors.from_params([SamplingParams(temperature=0.0)] * batch,
                                         seeds=list(range(batch)), steps=[0] * batch)
  return DecodeInputs(tokens=np.arange(batch, dtype=np.int32) % 1000,
                      input_slots=np.full(batch, -1, np.int32),
                      sample_slots=np.arange(batch, dtype=np.int32) % (num_slots - 1),
                      positions=pos, slots=slots.astype(np.int32), block_tables=tables,
                      lengths=pos + 1, sampling=sampling)


def count_all_reduces(decode, args, layout) -> int:
  hlo = decode.lower(*args, layout=layout, sampling_mode="greedy").compile().as_text()
  return len(re.findall(r"= \S+ all-reduce(?:-start)?\(", hlo))


def bench(config: ModelConfig, tp: int, batch: int, context: int, iters: int) -> dict:
  mesh = parallel.make_mesh(tp)
  t0 = time.perf_counter()
  params = jax.block_until_ready(sharded_random_params(config, mesh))
  init_s = time.perf_counter() - t0
  num_blocks = 1 + batch * -(-context // BLOCK_SIZE)
  shape = (num_blocks, config.num_kv_heads, 2, BLOCK_SIZE, config.head_dim)
  cache_dev = parallel.cache_sharding(mesh) if mesh is not None else None
  cache = tuple(jnp.zeros(shape, jnp.bfloat16, device=cache_dev)
                for _ in range(config.num_layers))
  num_slots = batch + 1
  buf = jnp.zeros((num_slots,), jnp.int32,
                  device=NamedSharding(mesh, P()) if mesh is not None else None)
  x = decode_inputs(batch, context, num_slots)
  decode, _ = make_steps(config, None, mesh)
  ints, floats, layout = packing.pack(x)
  rest = (ints, floats)

  def step(cache, buf):          # the engine's decode step: forward + greedy sampling
    cache, buf, tok, _ = decode(params, cache, buf, *rest, layout=layout, sampling_mode="greedy")
    return cache, buf, tok
  t0 = time.perf_counter()      # compile_s: the AOT compile (HLO check) + first call
  all_reduces = count_all_reduces(decode, (params, cache, buf) + rest, layout) if mesh else 0
  cache, buf, tok = step(cache, buf)
  jax.block_until_ready(tok)
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    cache, buf, tok = step(cache, buf)
  jax.block_until_ready(tok)
  t0 = time.perf_counter()
  for _ in range(iters):
    cache, buf, tok = step(cache, buf)
  jax.block_until_ready((cache, tok))
  step_s = (time.perf_counter() - t0) / iters
  mem = jax.devices()[0].memory_stats() or {}
  out = dict(tp=tp, batch=batch, context=context, iters=iters, step_ms=step_s * 1e3,
             tokens_per_s=batch / step_s, all_reduces=all_reduces, init_s=init_s,
             compile_s=compile_s, device0_peak_gib=mem.get("peak_bytes_in_use", 0) / 2**30,
             kv_cache_gib_per_device=num_blocks * np.prod(shape[1:]) * 2
             * config.num_layers / tp / 2**30)
  del params, cache, buf
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
  ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
  ap.add_argument("--context", type=int, default=1024)
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  print(f"devices: {jax.devices()}", flush=True)
  rows = []
  for batch in args.batch:
    for tp in args.tp:
      row = bench(LLAMA3_8B, tp, batch, args.context, args.iters)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        with open(os.path.join(args.out, "tp.jsonl"), "a") as f:
          f.write(json.dumps(row) + "\n")
  base = {r["batch"]: r["step_ms"] for r in rows if r["tp"] == 1}
  print("| TP | batch | step ms | tokens/s | speed-up | efficiency | all-reduces |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    speedup = base.get(r["batch"], float("nan")) / r["step_ms"]
    print(f"| {r['tp']} | {r['batch']} | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} | "
          f"{speedup:.2f}x | {speedup / r['tp']:.0%} | {r['all_reduces']} |")


if __name__ == "__main__":
  main()
