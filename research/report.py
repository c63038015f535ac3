"""Sweep outputs: CSV + JSON of the rows, and PNG plots against block size.

NOTE: matplotlib runs on the Agg backend (files only), chosen before pyplot
is imported, so this works on headless machines and in tests.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

PLOTS = (  # file stem, y label, row keys (one subplot each)
    ("waste", "% of slots / blocks", ("waste_pct", "stranded_free_pct_when_blocked")),
    ("concurrency", "sequences", ("mean_concurrency", "peak_concurrency")),
    ("latency_p99", "seconds", ("chat_itl_p99_s", "report_itl_p99_s", "chat_ttft_p99_s",
                                "report_ttft_p99_s")),
    ("failures", "requests", ("failed_for_memory", "preemptions")),
)


def write_rows(rows: Sequence[dict], out_dir: str, stem: str, meta: dict) -> tuple[str, str]:
  """Writes <stem>.csv and <stem>.json (rows plus `meta`: trace, budget, device...)."""
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, f"{stem}.csv")
  json_path = os.path.join(out_dir, f"{stem}.json")
  keys = list(dict.fromkeys(k for row in rows for k in row))
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump({"meta": meta, "rows": list(rows)}, f, indent=1)
  return csv_path, json_path


def plot_rows(rows: Sequence[dict], out_dir: str, stem: str, title: str) -> list[str]:
  """One PNG per entry of PLOTS: a line per mode, block size on a log2 x axis."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  modes = list(dict.fromkeys(r["mode"] for r in rows))
  for name, ylabel, keys in PLOTS:
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
      for mode in modes:
        pts = sorted((r["block_size"], r[key]) for r in rows
                     if r["mode"] == mode and r.get(key) is not None)
        if pts:
          ax.plot(*zip(*pts), marker="o", label=mode)
      ax.set_xscale("log", base=2)
      ax.set_xlabel("block size (tokens)")
      ax.set_ylabel(ylabel)
      ax.set_title(key, fontsize=9)
      ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{stem}_{name}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  return paths
