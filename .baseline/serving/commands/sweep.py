"""`pagedjax sweep`: block size x memory mode through the REAL engine, under one KV budget.

Each run replays the same trace (generated, or --trace FILE) with greedy,
ignore_eos sampling, so every request produces its trace's max_tokens.
Writes sweep.csv, sweep.json, sweep_steps.json (timed steps for a cost-model
fit) and PNG plots to --out. CPU runs need small traces (e.g. --scale 0.1
--num-requests 20) and few configurations; `pagedjax simulate` scales.
"""
from __future__ import annotations

import argparse
import json
import os

from engine.experiments.cli_args import (add_grid_args, add_workload_args, max_model_len_of,
                                         trace_from_args)

NAME = "sweep"
HELP = "sweep KV block sizes and memory modes through the real engine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", default="random:smollm2-135m",
                      help="model to run: random:<config>, a GGUF/folder, or 'default' "
                           "(the bundled SmolLM2)")
  parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
  parser.add_argument("--kv-budget-mb", type=float, default=16.0,
                      help="KV cache bytes for every run, in MiB (default 16)")
  parser.add_argument("--fit-cost-model", metavar="PATH",
                      help="fit a step-time cost model to the timed steps and write it here")
  parser.add_argument("--attention-bench", metavar="JSON",
                      help="with --fit-cost-model: take the kv_token and block terms from this "
                           "benchmarks/block_sizes.py output (same GPU) instead of fitting them")
  parser.add_argument("--device-name", default="", help="recorded with the fitted cost model")
  parser.add_argument("--compile-cache", metavar="DIR",
                      help="JAX persistent compilation cache (reuses compiles across runs)")
  add_workload_args(parser)
  add_grid_args(parser, "8,16,32,64,128,256")


def run(args: argparse.Namespace) -> int:
  import jax                                   # NOTE: lazy, --help stays fast
  if args.compile_cache:
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from engine import LLMEngine
  from engine.experiments import cost_model as cm
  from engine.experiments.grid import print_table, sweep_config_from_args, write_outputs
  from engine.experiments.real_backend import RealBackend
  from engine.experiments.sweep import check_trace, run_sweep
  from engine.parallel import place_model
  from models import load_model

  model_name = None if args.model == "default" else args.model
  # NOTE: fused once here; every run's engine then shares these params (no copy per run).
  model = place_model(load_model(model_name, dtype=args.dtype), None)
  trace = trace_from_args(args)
  mc = model.config
  max_len = max_model_len_of(args, trace, mc.max_position_embeddings)
  check_trace(trace, max_len)
  config = sweep_config_from_args(args, int(args.kv_budget_mb * (1 << 20)), max_len,
                                  model_name, args.dtype)
  shape = cm.ModelShape.of(args.model, mc, args.dtype)
  os.makedirs(args.out, exist_ok=True)
  partial = os.path.join(args.out, "sweep_partial.json")

  def save_partial(rows: list[dict], steps: list[dict]) -> None:
    # NOTE: a sweep cut short keeps its finished runs and their timed steps.
    with open(partial, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "steps": steps}, f)
  rows, steps = run_sweep(trace, config, shape,
                          lambda spec: RealBackend(LLMEngine(spec.config, model=model)),
                          progress=not args.no_progress, on_row=save_partial)
  device = args.device_name or str(jax.devices()[0].device_kind)
  meta = {"backend": "real", "model": args.model, "device": device,
          "kv_budget_bytes": config.kv_budget_bytes, "max_model_len": max_len,
          "clock": args.clock, "title": f"real engine, {args.model}, {device}"}
  paths = write_outputs(args, rows, "sweep", trace, meta)
  steps_path = os.path.join(args.out, "sweep_steps.json")
  with open(steps_path, "w", encoding="utf-8") as f:
    json.dump({"meta": meta, "shape": shape.__dict__, "steps": steps}, f)
  os.remove(partial)              # NOTE: superseded by sweep.json and sweep_steps.json
  print_table(rows)
  if args.fit_cost_model:
    fitted = cm.fit_steps(steps, shape, device, f"pagedjax sweep on {device}, {meta}",
                          args.attention_bench)
    cm.save(fitted, args.fit_cost_model)
    print(f"cost model: {args.fit_cost_model} fit error {fitted.fit_error}")
  print("wrote", ", ".join(paths + [steps_path]))
  return 0
