"""`pagedjax simulate`: the engine's own loop, scheduler and KV managers with a fitted
step-time model.

No model runs: every step hands back one dummy token per decode iteration of
each sampling row, and its duration comes from a cost model fitted to measured steps
(configs/cost_models/<name>.json, or a path). The KV budget is in bytes of the
cost model's model shape (or --model-config), so an 80 GB GPU serving an 8B
model replays on a CPU. One run of the default 200-request trace takes about
10 s on a shared 2-core CPU (2026-12-01); the default grid is 3 runs (block
size 16, each memory mode, chunked prefill on): about 30 s. The full study is
36 runs (about 6 minutes): --block-sizes 8,16,32,64,128,256 --chunked both.
Results (CSV, JSON) are rewritten after every run, so an interrupted run keeps
the finished ones. --compare SWEEP_JSON reports how far the simulator is from
a real sweep of the same trace.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from serving.commands.sweep_flags import (add_grid_args, add_workload_args, max_model_len_of,
                                         trace_from_args)

NAME = "simulate"
HELP = "simulate block sizes and memory modes at full scale with a fitted cost model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--cost-model", default="cpu-smollm2-135m",
                      help="configs/cost_models/<name>.json or a JSON path")
  parser.add_argument("--model-config", default=None,
                      help="take the KV shape from configs/<name>.json (default: the cost "
                           "model's shape)")
  parser.add_argument("--kv-dtype", default=None,
                      help="KV cache dtype for bytes per block (default: the cost model's)")
  parser.add_argument("--kv-budget-gb", type=float, default=56.0,
                      help="KV cache GiB for every run; 56 is an 80 GB GPU at 90%% minus "
                           "16 GB of 8B bf16 weights")
  parser.add_argument("--vocab-size", type=int, default=32000, help="ids for synthetic prompts")
  parser.add_argument("--compare", metavar="SWEEP_JSON",
                      help="a real `pagedjax sweep` JSON of the same trace and grid to compare "
                           "to (default: none)")
  add_workload_args(parser)
  add_grid_args(parser, "16", chunked="on")


def run(args: argparse.Namespace) -> int:
  from research import cost_model as cm
  from research.simulator import SimBackend
  from research.sweep import check_trace, run_sweep
  from serving.commands.sweep_runs import print_table, sweep_config_from_args, write_outputs

  model = cm.load(cm.bundled(args.cost_model))
  shape = _shape(args, model.shape)
  trace = trace_from_args(args)
  max_len = max_model_len_of(args, trace, shape.max_position_embeddings)
  check_trace(trace, max_len)
  config = sweep_config_from_args(args, int(args.kv_budget_gb * (1 << 30)), max_len,
                                  None, "float32")

  def make(spec):
    return SimBackend(spec.config, shape, spec.num_blocks, args.vocab_size,
                      model.for_kv_dtype(spec.kv_dtype))

  meta = {"backend": "simulator", "cost_model": args.cost_model, "device": model.device,
          "shape": shape.name, "kv_budget_bytes": config.kv_budget_bytes,
          "max_model_len": max_len, "clock": args.clock,
          "title": f"simulated {shape.name} on {model.device or '?'}"}

  def save_partial(rows: list[dict], steps: list[dict]) -> None:
    # NOTE: the final files, rewritten after each run: an interrupted run keeps its rows.
    write_outputs(args, rows, "simulate", trace, {**meta, "partial": True}, plots=False)
  rows, _ = run_sweep(trace, config, shape, make, cost_model=model,
                      progress=not args.no_progress, on_row=save_partial)
  paths = write_outputs(args, rows, "simulate", trace, meta)
  print_table(rows)
  if args.compare:
    _compare(args, rows)
  print("wrote", ", ".join(paths))
  return 0


def _shape(args: argparse.Namespace, shape):
  """The cost model's shape, or --model-config's, with --kv-dtype applied."""
  from research import cost_model as cm
  if args.model_config:
    from models.config import ModelConfig
    from models.weights.random_init import config_path
    shape = cm.ModelShape.of(args.model_config,
                             ModelConfig.from_json(config_path(args.model_config)), shape.dtype)
  if args.kv_dtype:
    shape = dataclasses.replace(shape, dtype=args.kv_dtype)
  return shape


def _compare(args: argparse.Namespace, rows: list[dict]) -> None:
  from research import compare as cmp
  with open(args.compare, encoding="utf-8") as f:
    real_rows = json.load(f)["rows"]
  diffs = cmp.compare(real_rows, rows)
  with open(f"{args.out}/compare.json", "w", encoding="utf-8") as f:
    json.dump(diffs, f, indent=1)
  for d in diffs:
    print(json.dumps(d))
