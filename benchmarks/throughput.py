"""Offline engine throughput on a GPU, next to its roofline (run on an H100/H200).

Usage: PYTHONPATH=. python -m benchmarks.throughput --out DIR
           [--models llama3.2-1b,llama3-8b] [--batches 64,256] [--decode-steps 1,4]

1. Correctness on the GPU: random-weight SmolLM2 shapes in float32; the engine's greedy
   tokens (Pallas kernels) against the dense reference generate and against the engine's
   own XLA path, on the same device.
2. For each model shape (random bf16 weights) and batch: `LLM.generate` of `batch`
   128-token prompts x 256 new tokens (ignore_eos): tokens/s; the steady decode step's
   device time against its roofline (weight bytes + KV bytes over the read-only bandwidth
   measured in this run); and the fraction of wall time the GPU sits idle between decode
   steps (1 - device time of a decode step / wall time per decode-only engine step).
   `--decode-steps` runs each row once per multi-step count (`num_decode_steps`): a
   decode-only step then runs that many decode iterations on the device; "decode step"
   is the device time per iteration, the idle share compares a whole multi-step.
HF transformers' numbers come from `benchmarks/hf_baseline.py` (a separate process: torch
and JAX should not share the GPU's memory), merged by `--hf-json`.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels
from engine import LLM, SamplingParams
from engine import step_inputs
from engine.kv_layout import bytes_per_block
from pallas_kernels.backend import KNOWN_BACKENDS

PROMPT, NEW = 128, 256


def read_bandwidth(gib: float = 4.0) -> float:
  """Read-only bandwidth in bytes/s: a max-reduction over `gib` GiB of bf16."""
  x = jnp.ones((int(gib * 2**30) // 2,), jnp.bfloat16)
  f = jax.jit(lambda a: jnp.max(a))
  jax.block_until_ready(f(x))
  t0 = time.perf_counter()
  for _ in range(10):
    out = f(x)
  jax.block_until_ready(out)
  return x.nbytes * 10 / (time.perf_counter() - t0)


def check_correctness(prompt_lens=(5, 37, 130), new=16, backend=None) -> dict:
  from models.reference import reference_generate
  rng = np.random.default_rng(0)
  shape = dict(max_num_seqs=4, max_model_len=512, num_blocks=256)
  llm = LLM("random:smollm2-135m", attention_backend=backend, **shape)
  xla = LLM(loaded_model=llm.engine.model, attention_backend="xla", **shape)
  cfg, params = llm.engine.model.config, llm.engine.model.params
  prompts = [rng.integers(0, cfg.vocab_size, n).tolist() for n in prompt_lens]
  sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
  multi = LLM(loaded_model=llm.engine.model, num_decode_steps=4,
              attention_backend=backend, **shape)
  tokens = lambda e: [o.token_ids for o in e.generate(prompt_token_ids=prompts,
                                                      sampling_params=sp, use_tqdm=False)]
  ours, theirs, multi_out = tokens(llm), tokens(xla), tokens(multi)
  ref = [reference_generate(cfg, params, p, new) for p in prompts]
  return {"backend": backend or pallas_kernels.default_backend(),
          "tokens_equal_reference": [a == b for a, b in zip(ours, ref)],
          "tokens_equal_xla_engine": [a == b for a, b in zip(ours, theirs)],
          "multi_step_4_equal_reference": [a == b for a, b in zip(multi_out, ref)],
          "prompt_lens": list(prompt_lens), "new_tokens": new}


def check_bf16_against_triton(backend: str, prompt_lens=(5, 200, 700), new=8,
                              kv_cache_dtype: str = "auto") -> dict:
  """`backend`'s engine against the Triton one in bfloat16 (in float32, the check
  above, "mosaic" prefill runs the Triton kernel): greedy tokens equal per prompt."""
  rng = np.random.default_rng(2)
  shape = dict(dtype="bfloat16", max_num_seqs=4, max_model_len=1024, num_blocks=512,
               kv_cache_dtype=kv_cache_dtype)
  ref = LLM("random:smollm2-135m", attention_backend="triton", **shape)
  # NOTE: backend None is the platform default (an 8-bit cache may not name "mosaic").
  ours = LLM(loaded_model=ref.engine.model, attention_backend=backend, **shape)
  prompts = [rng.integers(0, 49152, n).tolist() for n in prompt_lens]
  sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
  outs = [e.generate(prompt_token_ids=prompts, sampling_params=sp, use_tqdm=False)
          for e in (ours, ref)]
  return {"backend": backend or pallas_kernels.default_backend(), "vs": "triton",
          "dtype": "bfloat16", "kv_cache_dtype": kv_cache_dtype,
          "prompt_lens": list(prompt_lens),
          "tokens_equal": [a.token_ids == b.token_ids for a, b in zip(*outs)],
          "first_token_equal": [a.token_ids[0] == b.token_ids[0] for a, b in zip(*outs)]}


def _timed_steps(llm: LLM) -> list[tuple[float, bool]]:
  """Wraps engine.step to record (wall seconds, decode-only?) per step."""
  log: list[tuple[float, bool]] = []
  engine, step = llm.engine, llm.engine.step

  def wrapped():
    t0 = time.perf_counter()
    before = engine.stats().prefill_tokens_computed_total
    out = step()
    log.append((time.perf_counter() - t0, engine.stats().prefill_tokens_computed_total == before))
    return out
  engine.step = wrapped
  return log


def decode_inputs(runner, batch: int, ctx: int, steps: int = 1) -> step_inputs.DecodeInputs:
  """Decode inputs of `batch` rows at `ctx` tokens each (then `steps` iterations), over
  distinct real blocks."""
  blocks = -(-(ctx + steps - 1) // runner.cache_config.block_size)
  width = min(w for w in runner.buckets.table_widths if w >= blocks)
  x = step_inputs.empty_decode(batch, width, runner.trash_slot)
  ids = np.arange(batch * width, dtype=np.int32) % (runner.cache_config.num_blocks - 1)
  x.block_tables[:] = ids.reshape(batch, width) + 1
  x.lengths[:] = ctx
  x.positions[:] = ctx - 1
  x.num_steps[:] = steps
  return x


def decode_engine(model: str, batch: int, ctx: int, dtype: str = "bfloat16",
                  num_blocks: int | None = None, backend: str | None = None,
                  ) -> tuple[LLM, step_inputs.DecodeInputs]:
  """An engine for `random:<model>` sized for `batch` rows of `ctx` tokens, and such decode inputs."""
  llm = LLM(f"random:{model}", dtype=dtype, max_num_seqs=batch, max_model_len=max(512, ctx + 1),
            num_blocks=num_blocks or batch * (ctx // 16 + 2) + 1, attention_backend=backend)
  return llm, decode_inputs(llm.engine.runner, batch, ctx)


def decode_device_time(llm: LLM, batch: int, ctx: int, iters: int = 20, steps: int = 1) -> float:
  """Seconds per decode step of `batch` rows at `ctx` tokens (`steps` iterations), device
  only (no host loop)."""
  runner = llm.engine.runner
  x = decode_inputs(runner, batch, ctx, steps)
  jax.block_until_ready(runner._run_decode(x, steps=steps))
  t0 = time.perf_counter()
  for _ in range(iters):
    out = runner._run_decode(x, steps=steps)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def prefill_rate(llm: LLM, prompts: list[list[int]]) -> float:
  """Prompt tokens per second of a warm prefill-only run (one output token each)."""
  sp = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
  llm.generate(prompt_token_ids=prompts[:2], sampling_params=sp, use_tqdm=False)
  t0 = time.perf_counter()
  llm.generate(prompt_token_ids=prompts, sampling_params=sp, use_tqdm=False)
  return sum(map(len, prompts)) / (time.perf_counter() - t0)


def bench_model(name: str, batch: int, bandwidth: float, prompt_len: int = PROMPT,
                new: int = NEW, decode_steps: int = 1, backend: str | None = None,
                kv_cache_dtype: str = "auto") -> dict:
  llm = LLM(f"random:{name}", dtype="bfloat16", max_num_seqs=batch,
            max_model_len=prompt_len + new, num_decode_steps=decode_steps,
            max_batch_tokens=2048, enable_prefix_caching=False, kv_cache_memory_fraction=0.5,
            attention_backend=backend, kv_cache_dtype=kv_cache_dtype)
  cfg = llm.engine.model.config
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, cfg.vocab_size, prompt_len).tolist() for _ in range(batch)]
  t0 = time.perf_counter()   # warm run: compiles every shape the timed run uses
  llm.generate(prompt_token_ids=prompts, use_tqdm=False,
               sampling_params=SamplingParams(temperature=0, max_tokens=new, ignore_eos=True))
  warm_s = time.perf_counter() - t0
  log = _timed_steps(llm)
  t0 = time.perf_counter()
  outs = llm.generate(prompt_token_ids=prompts, use_tqdm=False,
                      sampling_params=SamplingParams(temperature=0, max_tokens=new,
                                                     ignore_eos=True))
  wall = time.perf_counter() - t0
  generated = sum(len(o.token_ids) for o in outs)
  mid = prompt_len + new // 2
  multi_s = decode_device_time(llm, batch, mid, steps=decode_steps)
  step_s = multi_s / decode_steps
  params = llm.engine.model.params
  weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  if not cfg.tie_word_embeddings:
    weight_bytes -= params["embed"].nbytes     # decode gathers a few embedding rows only
  kv_bytes = batch * mid * bytes_per_block(cfg, 1, llm.engine.config.cache_dtype)
  roofline = (weight_bytes + kv_bytes) / bandwidth
  decode_walls = [w for w, decode_only in log if decode_only]
  wall_per_decode = float(np.median(decode_walls)) if decode_walls else float("nan")
  return {"model": name, "batch": batch, "decode_steps": decode_steps,
          "attention_backend": backend or pallas_kernels.default_backend(),
          "kv_cache_dtype": llm.engine.config.cache_dtype,
          "prompt_len": prompt_len, "prefill_tokens_per_s": prefill_rate(llm, prompts),
          "tokens_per_s": generated / wall, "wall_s": wall,
          "warm_run_s": warm_s, "generated": generated,
          "decode_step_ms": step_s * 1e3, "roofline_ms": roofline * 1e3,
          "step_over_roofline": step_s / roofline,
          "engine_step_wall_ms": wall_per_decode * 1e3,
          "gpu_idle_fraction": max(0.0, 1 - multi_s / wall_per_decode),
          "compilations": llm.engine.stats().num_compilations,
          "row_tokens_sha1": [token_digest(o.token_ids) for o in outs]}


def token_digest(token_ids) -> str:
  """A short digest of one row's generated tokens (runs compare rows by it)."""
  return hashlib.sha1(np.asarray(token_ids, np.int64).tobytes()).hexdigest()[:12]


def _fmt(x, spec: str) -> str:
  return "n/a" if x is None else format(x, spec)


def to_markdown(rows: list[dict], hf: dict) -> str:
  """`hf` holds benchmarks/hf_baseline.py's results, keyed "<model>/<batch>/<variant>"."""
  lines = ["| model | batch | decode steps | KV dtype | tokens/s | HF eager | x eager | "
           "HF compiled | x compiled | decode step ms | roofline ms | step/roofline | "
           "engine step ms | GPU idle |", "|" + "---|" * 14]
  for r in rows:
    cells = []
    for variant in ("eager", "compiled"):
      h = hf.get(f"{r['model']}/{r['batch']}/{variant}", {}).get("tokens_per_s")
      cells += [_fmt(h, ".0f"), f"{r['tokens_per_s'] / h:.1f}x" if h else "n/a"]
    lines.append(
        f"| {r['model']} | {r['batch']} | {r.get('decode_steps', 1)} | "
        f"{r.get('kv_cache_dtype', 'bfloat16')} | "
        f"{r['tokens_per_s']:.0f} | {' | '.join(cells)} | "
        f"{r['decode_step_ms']:.2f} | {r['roofline_ms']:.2f} | "
        f"{r['step_over_roofline']:.2f} | {r['engine_step_wall_ms']:.2f} | "
        f"{100 * r['gpu_idle_fraction']:.1f}% |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", default=".")
  ap.add_argument("--models", default="llama3.2-1b,llama3-8b")
  ap.add_argument("--batches", default="64,256")
  ap.add_argument("--hf-json", default=None, help="results of benchmarks/hf_baseline.py")
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--prompt-len", type=int, default=PROMPT)
  ap.add_argument("--new-tokens", type=int, default=NEW)
  ap.add_argument("--attention-backend", default=None, choices=KNOWN_BACKENDS,
                  help="engine attention backend (default: the platform's)")
  ap.add_argument("--kv-cache-dtype", default="auto",
                  help="comma-separated KV-cache dtypes (auto, bfloat16, int8, float8_e4m3), "
                       "one run per model and batch each (default: auto)")
  ap.add_argument("--decode-steps", default="1",
                  help="comma-separated num_decode_steps values, one run per model and batch each")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  result = {"device": str(jax.devices()[0].device_kind), "date": time.strftime("%Y-%m-%d")}
  if not args.skip_check:
    result["correctness"] = check_correctness(backend=args.attention_backend)
    if pallas_kernels.resolve_backend(args.attention_backend) not in ("triton", "xla"):
      result["correctness"]["bf16"] = check_bf16_against_triton(args.attention_backend)
      result["correctness"]["bf16_int8_default"] = check_bf16_against_triton(
          None, kv_cache_dtype="int8")
    print(json.dumps(result["correctness"]), flush=True)
  result["read_bandwidth_TBps"] = read_bandwidth() / 1e12
  rows = []
  for name in args.models.split(","):
    for batch, steps, kv in itertools.product((int(b) for b in args.batches.split(",")),
                                              (int(k) for k in args.decode_steps.split(",")),
                                              args.kv_cache_dtype.split(",")):
      rows.append(bench_model(name, batch, result["read_bandwidth_TBps"] * 1e12,
                              args.prompt_len, args.new_tokens, steps,
                              args.attention_backend, kv))
      print(json.dumps(rows[-1]), flush=True)
      _save(args.out, dict(result, rows=rows))
      gc.collect()
      jax.clear_caches()
  hf = json.load(open(args.hf_json)) if args.hf_json and os.path.exists(args.hf_json) else {}
  result.update(rows=rows, hf=hf, markdown=to_markdown(rows, hf))
  print(result["markdown"])
  _save(args.out, result)


def _save(out_dir: str, result: dict) -> None:
  with open(os.path.join(out_dir, "throughput.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
