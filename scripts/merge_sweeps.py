"""Merges sweep outputs from several visits into one table, plots and cost-model fit.

A GPU visit is limited to ~10 minutes, so a full grid arrives in pieces (each a
`pagedjax sweep --out DIR` folder holding sweep.json, or sweep_partial.json when
cut short, and sweep_steps.json). This writes the merged sweep.csv/.json and the
PNG plots to --out, and with --fit-cost-model refits the step-time model to all
timed steps found.

Usage: .venv/bin/python scripts/merge_sweeps.py --out docs/case-study/h100-sweep \
           [--fit-cost-model configs/cost_models/h100-llama3-8b.json]
           [--attention-bench block_sizes.json] [--note TEXT] FILE...
Later files win when two hold the same (mode, block size) run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from research import cost_model as cm   # noqa: E402
from research import report             # noqa: E402


def load_pieces(paths: list[str]) -> tuple[list[dict], list[dict], dict, dict | None]:
  """(rows, timed steps, meta of the last full sweep.json, model shape or None)."""
  rows: dict[tuple, dict] = {}
  steps, meta, shape = [], {}, None
  for path in paths:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    for row in d.get("rows", []):
      rows[(row["mode"], row["block_size"])] = row
    steps += d.get("steps", [])
    if "rows" in d and "meta" in d:
      meta = d["meta"]
    shape = d.get("shape", shape)
  order = sorted(rows, key=lambda k: (k[0], k[1]))
  return [rows[k] for k in order], steps, meta, shape


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("files", nargs="+", help="sweep.json / sweep_partial.json / sweep_steps.json")
  ap.add_argument("--out", required=True, help="folder for the merged sweep.csv/.json and plots")
  ap.add_argument("--fit-cost-model", metavar="PATH", help="refit the cost model, write it here")
  ap.add_argument("--attention-bench", metavar="JSON",
                  help="benchmarks/block_sizes.py output of the same GPU: fixes the cost model's "
                       "kv_token and block terms from it instead of fitting them")
  ap.add_argument("--note", default="", help="recorded in the merged meta")
  args = ap.parse_args(argv)
  rows, steps, meta, shape = load_pieces(args.files)
  if not rows:
    raise SystemExit("no sweep rows in the given files")
  meta = {**meta, "note": args.note or meta.get("note", ""), "merged_from": args.files}
  paths = list(report.write_rows(rows, args.out, "sweep", meta))
  paths += report.plot_rows(rows, args.out, "sweep", f"sweep: {meta.get('title', '')}")
  print(f"{len(rows)} runs ->", ", ".join(paths))
  if args.fit_cost_model:
    if shape is None:
      raise SystemExit("--fit-cost-model needs a sweep_steps.json (it records the model shape)")
    device = meta.get("device", "")
    fitted = cm.fit_steps(steps, cm.ModelShape(**shape), device,
                          f"scripts/merge_sweeps.py over {len(args.files)} sweep outputs on {device}",
                          args.attention_bench)
    cm.save(fitted, args.fit_cost_model)
    print(f"cost model: {args.fit_cost_model} from {len(steps)} steps, "
          f"fit error {fitted.fit_error}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
