"""The benchmark's outputs: a table on stdout, `results.json` and latency plots."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from serving.bench.result import RequestResult

_LATENCIES = (("ttft", "TTFT", "Time to first token"), ("tpot", "TPOT", "Time per output token"),
              ("itl", "ITL", "Inter-token latency"), ("e2e_latency", "E2EL", "End-to-end latency"))


def table(summary: dict, title: str) -> str:
  """vLLM `bench serve`-style text table of a summary."""
  rows = [("Successful requests", summary["completed"]), ("Failed requests", summary["failed"]),
          ("Benchmark duration (s)", f"{summary['duration_s']:.2f}"),
          ("Total input tokens", summary["total_input_tokens"]),
          ("Total generated tokens", summary["total_output_tokens"]),
          ("Request throughput (req/s)", f"{summary['request_throughput']:.2f}"),
          ("Output token throughput (tok/s)", f"{summary['output_throughput']:.2f}"),
          ("Total token throughput (tok/s)", f"{summary['total_token_throughput']:.2f}")]
  slo = summary["slo"]
  if slo["ttft_ms"] is not None or slo["tpot_ms"] is not None:
    rows += [("SLO TTFT / TPOT (ms)", f"{slo['ttft_ms']} / {slo['tpot_ms']}"),
             ("Requests within the SLOs", summary["good_requests"]),
             ("Goodput (req/s)", f"{summary['goodput']:.2f}")]
  lines = [f" {title} ".center(60, "=")] + [f"{k + ':':<44}{v:>16}" for k, v in rows]
  for key, short, name in _LATENCIES:
    lines.append(f" {name} ".center(60, "-"))
    for stat in ("mean", "median", "p99"):
      value = summary[key][f"{stat}_ms"]
      shown = "n/a" if value is None else f"{value:.2f}"
      lines.append(f"{f'{stat.capitalize()} {short} (ms):':<44}{shown:>16}")
  for e in summary["errors"]:
    lines.append(f"error: {e}")
  lines.append("=" * 60)
  return "\n".join(lines)


def write_json(path: str, config: dict, summary: dict, results: list[RequestResult]) -> None:
  per_request = [{**dataclasses.asdict(r), "ttft_s": r.ttft if r.ok else None,
                  "tpot_s": r.tpot if r.ok else None} for r in results]
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"config": config, "summary": summary, "requests": per_request}, f, indent=1)


def plot_cdfs(path: str, results: list[RequestResult], title: str) -> None:
  """CDFs of TTFT, TPOT and ITL (ms) in one figure."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ok = [r for r in results if r.ok]
  series = {"TTFT": [r.ttft for r in ok], "TPOT": [t for t in (r.tpot for r in ok) if t],
            "ITL": [g for r in ok for g in r.itls]}
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for ax, (name, values) in zip(axes, series.items()):
    if values:
      x = np.sort(np.asarray(values) * 1e3)
      ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post")
    ax.set_xlabel(f"{name} (ms)")
    ax.set_ylabel("fraction of " + ("chunks" if name == "ITL" else "requests"))
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(out_dir: str, config: dict, summary: dict, results: list[RequestResult],
              title: str) -> list[str]:
  """Writes results.json, latency_cdf.png and table.txt; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, n) for n in ("results.json", "latency_cdf.png", "table.txt")]
  write_json(paths[0], config, summary, results)
  plot_cdfs(paths[1], results, title)
  with open(paths[2], "w", encoding="utf-8") as f:
    f.write(table(summary, title) + "\n")
  return paths
