"""Compiled kernels against their references on small varied shapes (GPU).

benchmarks/kernels.py runs these first; benchmarks/mosaic_probe.py
--preflight runs the Mosaic prefill kernel on the same problems.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import pallas_kernels as pk
from benchmarks.measure import guarded, rel_err

PREFILL_BACKENDS = ("triton", "mosaic")
ERROR_CHARS = 4000  # of a failing kernel's traceback kept in the output
SMALL_SHAPES = ((8, 8, 8, 64), (32, 12, 4, 128), (256, 9, 3, 64))  # bs, hq, hkv, d


def small_problems(key, dtype, shape):
  """check_small's decode and prefill problems (5 and 3 sequences)."""
  bs, hq, hkv, d = shape
  nb = 5 * (512 // bs) + 1
  kv = jax.random.normal(key, (nb, hkv, 2, bs, d), dtype)
  tables = (jax.random.permutation(key, nb - 1) + 1).reshape(5, -1).astype(jnp.int32)
  q = jax.random.normal(jax.random.fold_in(key, 1), (5, hq, d), dtype)
  lengths = jnp.array([1, 0, 511, 512, 77], jnp.int32)
  tq = jax.random.normal(jax.random.fold_in(key, 2), (300, hq, d), dtype)
  cu = jnp.array([0, 100, 100, 290], jnp.int32)
  kvl = jnp.array([400, 0, 190], jnp.int32)
  return (q, kv, tables, lengths), (tq, kv, tables[:3], cu, kvl)


def check_small(key, prefill_backends=PREFILL_BACKENDS):
  """Compiled kernels vs references on varied small shapes (f32 and bf16)."""
  errs = []
  for dtype in (jnp.float32, jnp.bfloat16):
    for shape in SMALL_SHAPES:
      key, sub = jax.random.split(key)
      dec, pre = small_problems(sub, dtype, shape)
      errs.append(("decode", str(dtype.dtype), *shape, guarded(
          lambda: rel_err(pk.paged_decode_attention(*dec, backend="triton"),
                          pk.paged_decode_attention_reference(*dec)))))
      for backend in prefill_backends:  # mosaic: float32 runs Triton
        errs.append((f"prefill-{backend}", str(dtype.dtype), *shape, guarded(
            lambda: rel_err(pk.paged_prefill_attention(*pre, backend=backend),
                            pk.paged_prefill_attention_reference(*pre)),
            limit=ERROR_CHARS)))
  for e in errs:
    if isinstance(e[-1], str):
      print("check FAILED", e[:-1], "\n" + e[-1], flush=True)
    else:
      print("check", e, flush=True)
  return errs
