"""Shapes, checks and reports of benchmarks/decode_mosaic_probe.py: per-shape
markdown, the best tiling's pick, the summary table and the tuning table's
"decode_mosaic" entries (no JAX at import: the probe's parent only watches
its children)."""

from __future__ import annotations

import json
import os

from benchmarks import tables

SHAPES = ("64x2048/16", "8x8192/16", "32x4096/16", "256x1024/16",
          "64x2048/64", "64x2048/128")
HEADS = (32, 8, 128)  # q heads, kv heads, head_dim (Llama-3-8B)
TOLERANCE = 1e-2


def parse_shape(name: str) -> tuple[int, int, int]:
  dims, block = name.split("/")
  batch, ctx = dims.split("x")
  return int(batch), int(ctx), int(block)


def summarize(shape: str, kv_dtype: str, rows: list[dict]) -> tuple[list[str], dict]:
  """Markdown lines of one shape and KV dtype, and its summary row."""
  read = next((r for r in rows if r["kind"] == "read"), None)
  tri = next((r for r in rows if r["kind"] == "triton"), None)
  ok = [r for r in rows if r["kind"] == "mosaic" and "us" in r
        and r["err"] < TOLERANCE]
  gather = next((r for r in rows if r["kind"] == "gather"), None)
  pct = lambda us: 100 * read["us"] / us if read else float("nan")
  lines = [f"### {shape} {kv_dtype}", ""]
  if gather:
    lines += [f"The scales' XLA gather, in every time below: {gather['us']:.1f} µs "
              f"({gather['us_quarter']:.1f} at ctx/4).", ""]
  lines += ["| block_kv/stages/splits[/qk/conv] | µs | "
           "% of read-only | rows at ctx/4 µs | rel err | compile s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    if r["kind"] != "mosaic":
      continue
    if "error" in r:
      lines.append(f"| {_tiling(r['config'])} | "
                   f"error: {r['error'].splitlines()[0][:120]} ||||")
      continue
    lines.append(f"| {_tiling(r['config'])} | "
                 f"{r['us']:.1f} | {pct(r['us']):.0f} % | {r['us_quarter']:.1f} | "
                 f"{r['err']:.1e} | {r['compile_s']:.1f} |")
  best = pick(ok)
  summary = dict(shape=shape, kv_dtype=kv_dtype, read_us=read and read["us"],
                 triton_us=tri and tri["us"], triton_err=tri and tri["err"],
                 gather_us=gather and gather["us"],
                 best=best, wrong=[r["config"] for r in rows if r["kind"] == "mosaic"
                                   and "err" in r and r["err"] >= TOLERANCE])
  return lines, summary


def pick(ok: list[dict]) -> dict | None:
  """The correct tiling with the lowest geometric mean of its times over the
  best at full and at a quarter length."""
  if not ok:
    return None
  full = min(r["us"] for r in ok)
  quarter = min(r["us_quarter"] for r in ok)
  return min(ok, key=lambda r: (r["us"] / full) * (r["us_quarter"] / quarter))


def table_entries(summaries: list[dict]) -> list[dict]:
  """tuning.py "decode_mosaic" entries of the shapes with a correct tiling."""
  hq, hkv, d = HEADS
  out = []
  for s in summaries:
    if not s["best"]:
      continue
    batch, ctx, bs = parse_shape(s["shape"])
    b = s["best"]
    itemsize = 2 if s["kv_dtype"] == "bfloat16" else 1
    out.append(dict(batch=batch, context=ctx, kv_heads=hkv, q_heads=hq,
                    head_dim=d, block_size=bs, itemsize=itemsize,
                    kv_cache_dtype=s["kv_dtype"], **b["config"],
                    us=round(b["us"], 1), us_quarter=round(b["us_quarter"], 1),
                    pct_of_read=round(100 * s["read_us"] / b["us"], 1),
                    triton_us=round(s["triton_us"], 1)))
  return out


def write_table(entries: list[dict], table_dir: str | None = None,
                device_kind: str | None = None, source: str = "") -> str:
  """Merges `entries` into the table of `device_kind` (default: this
  process's device; "decode" entries kept); source: the recorded run they
  came from, if not this one."""
  key = lambda e: (e["batch"], e["context"], e["kv_heads"], e["head_dim"],
                   e["block_size"], e.get("kv_cache_dtype", "bfloat16"))
  new = {key(e) for e in entries}
  return tables.update(
      "decode_mosaic", lambda old: [e for e in old if key(e) not in new] + entries,
      "benchmarks.decode_mosaic_probe", table_dir, device_kind, source)


def summary_table(summaries: list[dict]) -> list[str]:
  """One row per shape and KV dtype; "vs bf16" is the best Mosaic time over
  the bf16 cache's best at the same shape."""
  lines = ["| shape | KV dtype | read-only µs | Triton µs (% of read) | Mosaic best µs "
           "(% of read) | vs Triton | vs bf16 | best: block_kv/stages/splits[/qk/conv] "
           "| rel err "
           "| wrong tilings |", "|---|---|---|---|---|---|---|---|---|---|"]
  bf16 = {s["shape"]: s["best"]["us"] for s in summaries
          if s["kv_dtype"] == "bfloat16" and s["best"]}
  for s in summaries:
    read, tri, best = s["read_us"], s["triton_us"], s["best"]
    if not (read and tri and best):
      lines.append(f"| {s['shape']} | {s['kv_dtype']} | {read} | {tri} | no correct "
                   f"Mosaic tiling ||||| {len(s['wrong'])} |")
      continue
    c = best["config"]
    vs = f"{best['us'] / bf16[s['shape']]:.2f}" if s["shape"] in bf16 else "-"
    lines.append(
        f"| {s['shape']} | {s['kv_dtype']} | {read:.1f} | {tri:.1f} ({100 * read / tri:.0f} %) | "
        f"{best['us']:.1f} ({100 * read / best['us']:.0f} %) | {tri / best['us']:.2f}x | {vs} | "
        f"{_tiling(c)} | {best['err']:.1e} | "
        f"{len(s['wrong'])} |")
  return lines


def _tiling(c: dict) -> str:
  """block_kv/stages/splits, and for an 8-bit cache /bf16|8bit/converters
  (and /s2 with two streams, /cN with N CTAs taking items in turn, /dN with
  N CTAs taking them from a counter, /iN with N warps issuing the copies)."""
  out = f"{c['block_kv']}/{c['stages']}/{c['num_splits']}"
  if "qk_8bit" in c:
    out += f"/{'8bit' if c['qk_8bit'] else 'bf16'}/{c['v_converters']}"
    out += f"/s{c['streams']}" if c.get("streams", 1) > 1 else ""
    if c.get("ctas", 0):
      out += f"/{'d' if c.get('dynamic') else 'c'}{c['ctas']}"
    out += f"/i{c['issuers']}" if c.get("issuers", 1) > 1 else ""
  return out


def table_from_run(path: str, device_kind: str, table_dir: str | None) -> str:
  """Merges the best tilings of a recorded run (its decode_mosaic_probe.json)
  into `device_kind`'s table."""
  with open(path) as f:
    summaries = json.load(f)["summary"]
  return write_table(table_entries(summaries), table_dir, device_kind,
                     os.path.basename(path))


def save(out: str, rows: list[dict], summaries: list[dict], md: list[str]):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "decode_mosaic_probe.json"), "w") as f:
    json.dump(dict(rows=rows, summary=summaries), f, indent=1)
  with open(os.path.join(out, "decode_mosaic_probe.md"), "w") as f:
    f.write("\n".join(summary_table(summaries) + [""] + md) + "\n")
