"""The GPU half of benchmarks/spec_decode.py: the self-check on the device and the device
times of decode and verify steps (the runner's own compiled steps, no host loop)."""
from __future__ import annotations

import gc
import time

import jax
import numpy as np

from benchmarks.throughput import decode_inputs, read_bandwidth
from engine import LLM, SamplingParams, step_inputs
from engine.kv_layout import bytes_per_block


def check_correctness(model: str = "smollm2-135m", new: int = 32) -> dict:
  """Random weights of a configs/ shape in float32 on the device's kernels: greedy with
  speculation (k = 4) against the engine without it and against the dense reference, on
  prompts that repeat a pattern (so drafts are proposed, and some accepted)."""
  from models.reference import reference_generate
  shape = dict(max_num_seqs=4, max_model_len=512, num_blocks=256)
  plain = LLM(f"random:{model}", **shape)
  spec = LLM(loaded_model=plain.engine.model, speculative="ngram", num_speculative_tokens=4,
             **shape)
  cfg, params = plain.engine.model.config, plain.engine.model.params
  rng = np.random.default_rng(0)
  prompts = [np.tile(rng.integers(0, cfg.vocab_size, period), 64)[:n].tolist()
             for period, n in ((5, 40), (9, 100), (3, 7), (16, 200))]
  sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
  tokens = lambda llm: [o.token_ids for o in llm.generate(prompt_token_ids=prompts,
                                                          sampling_params=sp, use_tqdm=False)]
  ours, theirs = tokens(spec), tokens(plain)
  ref = [reference_generate(cfg, params, p, new) for p in prompts]
  stats = spec.engine.stats()
  return {"spec_equal_reference": [a == b for a, b in zip(ours, ref)],
          "spec_equal_engine_without": [a == b for a, b in zip(ours, theirs)],
          "proposed": stats.spec_proposed_tokens_total,
          "accepted": stats.spec_accepted_tokens_total}


def verify_inputs(runner, batch: int, ctx: int, k: int) -> step_inputs.VerifyInputs:
  """Verify inputs of `batch` rows: the token at position ctx - 1 and k drafts each, over
  the same distinct real blocks as `decode_inputs`."""
  bs = runner.cache_config.block_size
  d = decode_inputs(runner, batch, ctx + k)
  x = step_inputs.empty_verify(batch, k, d.block_tables.shape[1], runner.trash_slot)
  x.block_tables[:] = d.block_tables
  per_row = np.arange(k + 1)
  pos = (ctx - 1 + per_row)[None, :].repeat(batch, 0)                     # [batch, k + 1]
  blocks = np.take_along_axis(d.block_tables, pos // bs, axis=1)
  x.positions[:] = pos.ravel()
  x.slots[:] = (blocks * bs + pos % bs).ravel()
  x.tokens[:] = np.random.default_rng(0).integers(0, runner.config.vocab_size, x.tokens.size)
  x.cu_q_lens[:] = np.arange(batch + 1) * (k + 1)
  x.kv_lens[:] = ctx + k
  x.logits_indices[:] = x.cu_q_lens[:batch, None] + per_row[None, :]
  x.drafts[:] = x.tokens.reshape(batch, k + 1)[:, 1:]
  x.num_drafts[:] = k
  return x


def _device_ms(run, x, iters: int = 20) -> float:
  jax.block_until_ready(run(x))
  t0 = time.perf_counter()
  for _ in range(iters):
    out = run(x)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters * 1e3


def step_times(model: str, batches, ks, ctx: int) -> list[dict]:
  """One row per (batch, step): decode (k = 0) and verify with each k."""
  bandwidth = read_bandwidth()
  shape = dict(dtype="bfloat16", max_num_seqs=max(batches), max_model_len=ctx + 2 * max(ks),
               num_blocks=max(batches) * ((ctx + max(ks)) // 16 + 2) + 1,
               enable_prefix_caching=False)
  base = LLM(f"random:{model}", **shape)
  cfg, params = base.engine.model.config, base.engine.model.params
  weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params))
  if not cfg.tie_word_embeddings:
    weight_bytes -= params["embed"].nbytes     # a step gathers a few embedding rows only
  roofline = lambda b: (weight_bytes + b * ctx * bytes_per_block(cfg, 1, "bfloat16")) / bandwidth
  runner = base.engine.runner
  decode = {b: _device_ms(runner._run_decode, decode_inputs(runner, b, ctx)) for b in batches}
  rows = [dict(batch=b, k=0, step_ms=decode[b], decode_ms=decode[b],
               roofline_ms=roofline(b) * 1e3) for b in batches]
  del runner
  for k in ks:
    llm = LLM(loaded_model=base.engine.model, speculative="ngram", num_speculative_tokens=k,
              **shape)
    runner = llm.engine.runner
    run = lambda x, runner=runner: runner._run("verify", x, 1)
    for b in batches:
      rows.append(dict(batch=b, k=k, step_ms=_device_ms(run, verify_inputs(runner, b, ctx, k)),
                       decode_ms=decode[b], roofline_ms=roofline(b) * 1e3))
      print(rows[-1], flush=True)
    del llm, runner, run
    gc.collect()
  return sorted(rows, key=lambda r: (r["batch"], r["k"]))
