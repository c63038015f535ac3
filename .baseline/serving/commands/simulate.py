"""`pagedjax simulate`: the engine's scheduler and KV managers with a fitted step-time model.

No model runs: every step appends one dummy token per sampling row, and its
duration comes from a cost model fitted to measured steps
(configs/cost_models/<name>.json, or a path). The KV budget is in bytes of the
cost model's model shape (or --model-config), so an 80 GB GPU serving an 8B
model with thousands of requests replays in seconds. --compare SWEEP_JSON
reports how far the simulator is from a real sweep of the same trace.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from engine.experiments.cli_args import (add_grid_args, add_workload_args, max_model_len_of,
                                         trace_from_args)

NAME = "simulate"
HELP = "simulate block sizes and memory modes at full scale with a fitted cost model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--cost-model", default="cpu-smollm2-135m",
                      help="configs/cost_models/<name>.json or a JSON path "
                           "(default cpu-smollm2-135m)")
  parser.add_argument("--model-config", default=None,
                      help="take the KV shape from configs/<name>.json instead of the cost model")
  parser.add_argument("--kv-dtype", default=None,
                      help="KV cache dtype for bytes per block (default: the cost model's)")
  parser.add_argument("--kv-budget-gb", type=float, default=56.0,
                      help="KV cache bytes in GiB for every run (default 56: an 80 GB GPU "
                           "at 90%% minus 16 GB of 8B bf16 weights)")
  parser.add_argument("--vocab-size", type=int, default=32000, help="ids for synthetic prompts")
  parser.add_argument("--compare", metavar="SWEEP_JSON",
                      help="a real `pagedjax sweep` JSON of the same trace and grid to compare to")
  add_workload_args(parser)
  add_grid_args(parser, "8,16,32,64,128,256")


def run(args: argparse.Namespace) -> int:
  from engine.experiments import compare as cmp
  from engine.experiments import cost_model as cm
  from engine.experiments.grid import print_table, sweep_config_from_args, write_outputs
  from engine.experiments.simulator import SimBackend, SimulatedEngine
  from engine.experiments.sweep import check_trace, run_sweep

  model = cm.load(cm.bundled(args.cost_model))
  shape = model.shape
  if args.model_config:
    from models.config import ModelConfig
    from models.weights.random_init import config_path
    shape = cm.ModelShape.of(args.model_config,
                             ModelConfig.from_json(config_path(args.model_config)), shape.dtype)
  if args.kv_dtype:
    shape = dataclasses.replace(shape, dtype=args.kv_dtype)
  trace = trace_from_args(args)
  max_len = max_model_len_of(args, trace, shape.max_position_embeddings)
  check_trace(trace, max_len)
  config = sweep_config_from_args(args, int(args.kv_budget_gb * (1 << 30)), max_len,
                                  None, "float32")

  def make(spec):
    return SimBackend(SimulatedEngine(spec.config, shape, spec.num_blocks, args.vocab_size),
                      model)

  rows, _ = run_sweep(trace, config, shape, make, cost_model=model,
                      progress=not args.no_progress)
  meta = {"backend": "simulator", "cost_model": args.cost_model, "device": model.device,
          "shape": shape.name, "kv_budget_bytes": config.kv_budget_bytes,
          "max_model_len": max_len, "clock": args.clock,
          "title": f"simulated {shape.name} on {model.device or '?'}"}
  paths = write_outputs(args, rows, "simulate", trace, meta)
  print_table(rows)
  if args.compare:
    with open(args.compare, encoding="utf-8") as f:
      real_rows = json.load(f)["rows"]
    diffs = cmp.compare(real_rows, rows)
    with open(f"{args.out}/compare.json", "w", encoding="utf-8") as f:
      json.dump(diffs, f, indent=1)
    for d in diffs:
      print(json.dumps(d))
  print("wrote", ", ".join(paths))
  return 0
