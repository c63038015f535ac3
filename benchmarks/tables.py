"""What the tuning tables' writers share (pallas_kernels/tuning/<device>.json):
their command-line flags and a read-merge-write of one key of a device's table.

Writers: benchmarks/decode_mosaic_probe.py ("decode_mosaic" entries) and
benchmarks/mosaic_probe.py ("prefill_mosaic_q8" entries).
"""

from __future__ import annotations

import json
import time


def add_flags(p, what: str, run_json: str) -> None:
  """--write-table, --from-run, --device-kind and --table-dir on parser p;
  what: the entries written, run_json: the recorded run's file."""
  p.add_argument("--write-table", action="store_true",
                 help=f"merge {what} into pallas_kernels/tuning/<device>.json "
                      "(default: off)")
  p.add_argument("--from-run", default=None, metavar="JSON",
                 help=f"no measuring: merge {what} of a recorded run (its {run_json}) "
                      "into --device-kind's table (default: off)")
  p.add_argument("--device-kind", default=None,
                 help="with --from-run: the device the run measured, as JAX names it "
                      "(e.g. 'NVIDIA H200'; default: none)")
  p.add_argument("--table-dir", default=None,
                 help="folder of the tuning tables (default: pallas_kernels/tuning)")


def update(key: str, merge, tool: str, table_dir=None, device_kind=None,
           source: str = "") -> str:
  """Sets table[key] = merge(its entries, [] if none) in the table of
  `device_kind` (default: this process's device), the other keys kept, and
  records the command (`tool`; source: the recorded run the entries came
  from, if not this one) under key + "_command". Returns the file's path."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from pallas_kernels import tuning  # pylint: disable=g-import-not-at-top
  kind = device_kind or jax.devices()[0].device_kind
  path = (pathlib.Path(table_dir) if table_dir else tuning.TABLE_DIR) / (
      f"{tuning.device_slug(kind)}.json")
  table = json.loads(path.read_text()) if path.exists() else {"device_kind": kind}
  table[key] = merge(table.get(key, []))
  how = f"--from-run {source} --device-kind '{kind}'" if source else "--write-table"
  table[f"{key}_command"] = (f"python3 -m {tool} {how} "
                             f"({time.strftime('%Y-%m-%d')}, jax {jax.__version__})")
  path.write_text(json.dumps(table, indent=1) + "\n")
  return str(path)
