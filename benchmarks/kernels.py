"""GPU benchmark of the paged-attention kernels (run on an H100/H200).

Usage: PYTHONPATH=. python -m benchmarks.kernels [--out DIR] [--skip ...]

Checks the compiled kernels against the references on random inputs, then
times (CUPTI kernel time, median of several iterations) our decode kernels
(Triton, and Mosaic GPU: on a non-Hopper GPU its column reports the failure), JAX's built-in Pallas paged_attention (best of a settings sweep), the XLA
gather+einsum reference and a read-only pass over the same KV bytes; and our
prefill kernels (backends "triton" and "mosaic") next to cuDNN / Pallas
Triton / Pallas Mosaic GPU dense causal attention and a bf16 matmul. The
Mosaic kernel first passes a preflight in a watched child process
(benchmarks/mosaic_probe.py): if it fails to compile, is wrong or hangs
there, its rows say so and the rest of the run goes on. Prints markdown
tables and writes them to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from benchmarks import prefill_baselines
from benchmarks.kernel_checks import ERROR_CHARS, PREFILL_BACKENDS, check_small
from benchmarks.measure import guarded, rel_err, timed  # noqa: F401 (re-exported)
from benchmarks.prefill_baselines import causal_flops

DECODE_SHAPES = (  # (batch, context, q_heads, kv_heads, head_dim)
    (64, 2048, 32, 8, 128), (8, 8192, 32, 8, 128), (256, 1024, 32, 8, 128),
    (32, 4096, 32, 8, 128), (64, 4096, 32, 8, 128), (64, 2048, 9, 3, 64))
BLOCK_SIZE = 16
TUNE_SKIP = {"decode"}  # tuned on 2026-11-22; the chosen values are defaults
DEADLINE = [float("inf")]  # wall-clock time after which sections are skipped


def make_decode(key, batch, ctx, hq, hkv, d, dtype):
  """Random paged problem whose cache holds exactly the used blocks + null."""
  bpr = ctx // BLOCK_SIZE
  nb = batch * bpr + 1
  k1, k2, k3 = jax.random.split(key, 3)
  kv = jax.random.normal(k1, (nb, hkv, 2, BLOCK_SIZE, d), dtype)
  q = jax.random.normal(k2, (batch, hq, d), dtype)
  tables = (jax.random.permutation(k3, nb - 1) + 1).reshape(batch, bpr)
  lengths = jnp.full((batch,), ctx, jnp.int32)
  return q, kv, tables.astype(jnp.int32), lengths


def builtin_decode(q, kv, tables, lengths, ppcb, splits):
  """JAX's own Pallas paged attention on the same data (K/V split out)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from jax.experimental.pallas.ops.gpu import paged_attention as pa  # pylint: disable=g-import-not-at-top
  k_pages = kv[:, :, 0].transpose(1, 0, 2, 3)  # [hkv, blocks, bs, d]
  v_pages = kv[:, :, 1].transpose(1, 0, 2, 3)
  fn = functools.partial(pa.paged_attention, pages_per_compute_block=ppcb,
                         k_splits=splits)
  return fn, (q, k_pages, v_pages, tables, lengths)


def bench_decode(rows, key):
  for shape in DECODE_SHAPES:
    if time.time() > DEADLINE[0]:
      print("deadline: skipping decode", shape)
      continue
    r = guarded(lambda: _bench_decode_shape(rows, key, shape))
    if r is not None:
      print("decode failed", shape, r, flush=True)


def _bench_decode_shape(rows, key, shape):
  batch, ctx, hq, hkv, d = shape
  q, kv, tables, lengths = make_decode(key, *shape, jnp.bfloat16)
  kv_bytes = batch * ctx * hkv * 2 * d * 2
  ref = pk.paged_decode_attention_reference(q, kv, tables, lengths)
  ours = functools.partial(pk.paged_decode_attention, backend="triton")
  err = rel_err(ours(q, kv, tables, lengths), ref)
  t_ours = timed(ours, q, kv, tables, lengths)
  best_split = None
  for ns in (1, 2, 4, 8):
    f = functools.partial(pk.paged_decode_attention, backend="triton",
                          num_splits=ns)
    t = timed(f, q, kv, tables, lengths)
    if best_split is None or t < best_split[0]:
      best_split = (t, ns)
  # NOTE: the Mosaic GPU decode (the Hopper default) with the device's tiling; on
  # other GPUs it cannot compile and the row says so.
  mosaic = functools.partial(pk.paged_decode_attention, backend="mosaic")
  m = guarded(lambda: (timed(mosaic, q, kv, tables, lengths),
                       rel_err(jax.jit(mosaic)(q, kv, tables, lengths), ref)))
  t_mosaic, err_mosaic = m if isinstance(m, tuple) else (float("nan"), m)
  t_xla = timed(pk.paged_decode_attention_reference, q, kv, tables, lengths)
  t_read = timed(lambda x: jnp.max(x, axis=(1, 2, 3, 4)), kv)
  best = None
  for ppcb in (4, 8, 16):
    for splits in (1, 4, 16):
      if (ctx // BLOCK_SIZE) % (splits * ppcb):
        continue
      try:
        fn, args = builtin_decode(q, kv, tables, lengths, ppcb, splits)
        t = timed(fn, *args)
      except Exception as e:  # pylint: disable=broad-except
        print("builtin failed", shape, ppcb, splits, type(e).__name__)
        continue
      if best is None or t < best[0]:
        best = (t, ppcb, splits)
  fn, args = builtin_decode(q, kv, tables, lengths, best[1], best[2])
  # NOTE: the built-in applies no softmax scale, so compare at scale 1.
  err_builtin = rel_err(jax.jit(fn)(*args), pk.paged_decode_attention_reference(
      q, kv, tables, lengths, scale=1.0))
  tb = lambda t: kv_bytes / t / 1e6
  rows.append(dict(
      shape=f"{batch}x{ctx} {hq}/{hkv}x{d}", ours_us=t_ours,
      ours_tbs=tb(t_ours), ours_pct=100 * t_read / t_ours,
      best_split_us=best_split[0], best_split=best_split[1],
      builtin_us=best[0], builtin_cfg=f"ppcb={best[1]},k={best[2]}",
      builtin_pct=100 * t_read / best[0], xla_us=t_xla, read_us=t_read,
      read_tbs=tb(t_read), speedup=best[0] / t_ours, err=err,
      err_builtin=err_builtin, mosaic_us=t_mosaic, mosaic_pct=100 * t_read / t_mosaic,
      mosaic_err=err_mosaic))
  print(json.dumps(rows[-1]), flush=True)


def prefill_problem(key, q_len, prefix, hq=32, hkv=8, d=128):
  kv_len = q_len + prefix
  nb = kv_len // BLOCK_SIZE + 1
  k1, k2, k3 = jax.random.split(key, 3)
  kv = jax.random.normal(k1, (nb, hkv, 2, BLOCK_SIZE, d), jnp.bfloat16)
  q = jax.random.normal(k2, (q_len, hq, d), jnp.bfloat16)
  tables = (jax.random.permutation(k3, nb - 1) + 1)[None].astype(jnp.int32)
  cu = jnp.array([0, q_len], jnp.int32)
  return q, kv, tables, cu, jnp.array([kv_len], jnp.int32)


def bench_prefill(rows, key, backends=PREFILL_BACKENDS, q_len=4096):
  for prefix in (0, 2048):
    if time.time() > DEADLINE[0]:
      continue
    args = prefill_problem(key, q_len, prefix)
    ref = pk.paged_prefill_attention_reference(*args)
    for backend in PREFILL_BACKENDS:
      name = f"{backend} paged, prefix {prefix}"
      if backend not in backends:
        rows.append(dict(name=name, us=float("nan"), tok_s=0, tflops=0,
                         err="skipped: failed the preflight (mosaic_preflight.md)"))
        continue
      r = guarded(lambda: _bench_paged_prefill(args, ref, backend, q_len,
                                               prefix), limit=ERROR_CHARS)
      if isinstance(r, str):
        print(f"prefill {backend} prefix {prefix} FAILED:\n{r}", flush=True)
        r = dict(us=float("nan"), tok_s=0, tflops=0, err=r.splitlines()[0])
      rows.append(dict(name=name, **r))
      print(json.dumps(rows[-1]), flush=True)
  rows.extend(prefill_baselines.dense_rows(key, q_len, timed))


def _bench_paged_prefill(args, ref, backend, q_len, prefix):
  ours = functools.partial(pk.paged_prefill_attention, backend=backend)
  err = rel_err(ours(*args), ref)
  t = timed(ours, *args, iters=10)
  return dict(us=t, tok_s=q_len / t * 1e6,
              tflops=causal_flops(q_len, prefix) / t / 1e6, err=err)


def tune(rows, key):
  """Sweeps the kernels' static tiling on the headline shapes."""
  from pallas_kernels.decode_triton import decode_triton  # pylint: disable=g-import-not-at-top
  from pallas_kernels.prefill_triton import prefill_triton  # pylint: disable=g-import-not-at-top
  for shape in () if "decode" in TUNE_SKIP else ((64, 4096, 32, 8, 128), (8, 8192, 32, 8, 128)):
    q, kv, tables, lengths = make_decode(key, *shape, jnp.bfloat16)
    for pages in (4, 8, 16):
      for warps in (4, 8):
        for stages in (2, 3):
          for ns in ((1,) if shape[0] == 64 else (4, 8)):
            if time.time() > DEADLINE[0]:
              return
            f = functools.partial(decode_triton, scale=0.1, num_splits=ns,
                                  pages_per_step=pages, num_warps=warps,
                                  num_stages=stages)
            t = guarded(lambda: timed(f, q, kv, tables, lengths))
            rows.append(dict(what=f"decode {shape[:2]}", us=t if isinstance(
                t, float) else 1e9, cfg=f"pages={pages} w={warps} st={stages} ns={ns}"))
  args = prefill_problem(key, 4096, 0)
  for block_q in (32, 64):
    for pages in (4, 8):
      for warps in (4, 8):
        for stages in (2, 3):
          if time.time() > DEADLINE[0]:
            return
          f = functools.partial(prefill_triton, scale=0.1, block_q=block_q,
                                pages_per_step=pages, num_warps=warps,
                                num_stages=stages)
          t = guarded(lambda: timed(f, *args, iters=5))
          rows.append(dict(what="prefill 4096", us=t if isinstance(
              t, float) else 1e9, cfg=f"bq={block_q} pages={pages} w={warps} st={stages}"))


def to_markdown(decode_rows, prefill_rows):
  lines = ["| shape (batch x ctx, q/kv heads x head_dim) | Triton µs | Triton TB/s "
           "| % of read-only | Mosaic µs (% of read-only) | built-in µs (best cfg) "
           "| built-in % | XLA ref µs | read-only µs (TB/s) | Triton vs built-in |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in decode_rows:
    mosaic = (f"{r['mosaic_us']:.1f} ({r['mosaic_pct']:.0f}%)"
              if isinstance(r["mosaic_err"], float) else f"failed: {r['mosaic_err'][:60]}")
    lines.append(
        f"| {r['shape']} | {r['ours_us']:.1f} | {r['ours_tbs']:.2f} | "
        f"{r['ours_pct']:.0f}% | {mosaic} | {r['builtin_us']:.1f} ({r['builtin_cfg']}) | "
        f"{r['builtin_pct']:.0f}% | {r['xla_us']:.1f} | {r['read_us']:.1f} "
        f"({r['read_tbs']:.2f}) | {r['speedup']:.2f}x |")
  cudnn = [r["tflops"] for r in prefill_rows if r["name"].startswith("cuDNN")]
  lines += ["", "| prefill (4096 new tokens, 32/8 heads x 128, bf16) | µs | "
            "tokens/s | TFLOP/s | % of cuDNN | rel. error |",
            "|---|---|---|---|---|---|"]
  for r in prefill_rows:
    pct = f"{100 * r['tflops'] / cudnn[0]:.0f}%" if cudnn and cudnn[0] else "-"
    err = r.get("err", "")
    err = f"{err:.1e}" if isinstance(err, float) else str(err)[:80]
    lines.append(f"| {r['name']} | {r['us']:.1f} | {r['tok_s']:.3g} | "
                 f"{r['tflops']:.0f} | {pct} | {err} |")
  return "\n".join(lines)


def mosaic_preflight(out):
  """True if the Mosaic prefill kernel compiled, ran and matched the reference
  on this script's problems in a watched child (benchmarks/mosaic_probe.py
  --preflight), so a compile error or a hung kernel cannot take this run down.

  NOTE: runs before this process starts JAX, so the child has the whole GPU.
  """
  cmd = [sys.executable, "-m", "benchmarks.mosaic_probe", "--preflight"]
  rc = subprocess.run(cmd + (["--out", out] if out else []), check=False).returncode
  print(f"mosaic preflight: {'passed' if rc == 0 else f'FAILED (exit {rc})'}",
        flush=True)
  return rc == 0


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--skip", default="", help="comma list: check,decode,prefill,tune")
  parser.add_argument("--budget_s", type=float, default=1e9)
  args = parser.parse_args()
  DEADLINE[0] = time.time() + args.budget_s
  skip = set(args.skip.split(","))
  backends = PREFILL_BACKENDS
  if not {"check", "prefill"} <= skip and not mosaic_preflight(args.out):
    backends = tuple(b for b in PREFILL_BACKENDS if b != "mosaic")
  print(jax.devices(), jax.__version__, flush=True)
  key = jax.random.key(0)
  errs = [] if "check" in skip else check_small(key, backends)
  decode_rows, prefill_rows = [], []
  if "decode" not in skip:
    bench_decode(decode_rows, key)
  if "prefill" not in skip:
    bench_prefill(prefill_rows, key, backends)
  tune_rows = []
  if "tune" not in skip:
    tune(tune_rows, key)
  md = to_markdown(decode_rows, prefill_rows)
  print(md)
  for r in sorted(tune_rows, key=lambda r: (r["what"], r["us"])):
    print("tune", json.dumps(r))
  if args.out:
    with open(f"{args.out}/kernels.json", "w") as f:
      json.dump(dict(check=errs, decode=decode_rows, prefill=prefill_rows,
                     tune=tune_rows,
                     device=str(jax.devices()[0].device_kind)), f, indent=1)
    with open(f"{args.out}/kernels.md", "w") as f:
      f.write(md + "\n")


if __name__ == "__main__":
  main()
