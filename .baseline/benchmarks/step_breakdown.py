"""Where a decode step's time goes (GPU): the engine's step next to ablated variants.

Usage: PYTHONPATH=. python -m benchmarks.step_breakdown [--model llama3.2-1b] [--batch 64]

Each variant is the same jitted forward with a different attention seam (full, no
barrier, write only, attention only, none), plus the lm-head and the sampler alone,
all on the engine's own cache and inputs; device time per call, median of windows.
"""
from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks.throughput import decode_engine
from engine.sampler import SamplingTensors, sample
from models import llama


def _time(f, *args, iters=20) -> float:
  jax.block_until_ready(f(*args))
  best = []
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(iters):
      out = f(*args)
    jax.block_until_ready(out)
    best.append((time.perf_counter() - t0) / iters)
  return min(best) * 1e3


def seams(backend: str):
  def full_no_barrier(q, k, v, c, m):
    c = pk.write_kv(c, k, v, m["slots"], backend=backend)
    return pk.paged_decode_attention(q, c, m["block_tables"], m["lengths"], backend=backend), c

  def write_only(q, k, v, c, m):
    return q, pk.write_kv(c, k, v, m["slots"], backend=backend)

  def attn_only(q, k, v, c, m):
    return pk.paged_decode_attention(q, c, m["block_tables"], m["lengths"], backend=backend), c

  def none(q, k, v, c, m):
    return q, c
  return {"no_barrier": full_no_barrier, "write_only": write_only, "attention_only": attn_only,
          "no_attention": none}


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--model", default="llama3.2-1b")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--ctx", type=int, default=256)
  ap.add_argument("--num-blocks", type=int, default=None,
                  help="KV cache blocks (default: just enough for the batch)")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  llm, x = decode_engine(args.model, args.batch, args.ctx, num_blocks=args.num_blocks)
  runner, cfg = llm.engine.runner, llm.engine.model.config
  params, backend = runner.model.params, pk.default_backend()
  res = {"engine_step": _time(lambda: runner._run_decode(x))}
  meta = {"slots": x.slots, "block_tables": x.block_tables, "lengths": x.lengths}
  for name, seam in seams(backend).items():
    f = jax.jit(functools.partial(llama.forward, config=cfg, attention_fn=seam),
                donate_argnames=("kv_caches",))

    def call(f=f):   # NOTE: the cache is donated and fed back, as in the engine
      hidden, runner.kv_cache = f(params, tokens=x.tokens, positions=x.positions,
                                  kv_caches=runner.kv_cache, attn_meta=meta)
      return hidden
    res[f"forward_{name}"] = _time(call)
  hidden = jnp.ones((args.batch, cfg.hidden_size), jnp.bfloat16)
  lm_head = jax.jit(functools.partial(llama.compute_logits, config=cfg))
  res["lm_head"] = _time(lambda: lm_head(params, hidden=hidden))
  logits = jax.random.normal(jax.random.key(0), (args.batch, cfg.vocab_size), jnp.float32)
  st = SamplingTensors.from_params([], seeds=[], steps=[], pad_to=args.batch)
  for mode in ("greedy", "random", "filtered"):
    res[f"sample_{mode}"] = _time(jax.jit(functools.partial(sample, mode=mode)), logits, st)
  res = {k: round(v, 3) for k, v in res.items()}
  res.update(model=args.model, batch=args.batch, ctx=args.ctx, backend=backend,
             num_blocks=runner.cache_config.num_blocks,
             device=jax.devices()[0].device_kind)
  print(json.dumps(res, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
