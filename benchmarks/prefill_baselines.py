"""Dense causal attention baselines for the prefill benchmarks (GPU).

cuDNN's fused attention is the target the paged prefill kernels are measured
against (issue 14: >= 90 % of its FLOP rate); JAX's Pallas Triton `mha` and
Mosaic GPU `attention_mgpu` and a bf16 matmul put it in context. Used by
benchmarks/kernels.py and benchmarks/mosaic_probe.py.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp


def causal_flops(q_len, prefix, hq=32, d=128):
  """QK^T and PV FLOPs of q_len causal tokens over a prefix (visible pairs)."""
  visible = q_len * prefix + q_len * (q_len + 1) / 2
  return 4 * hq * d * visible


def _dense_problems(key, q_len):
  """name -> thunk returning (fn, args) on dense [1, q_len, heads, 128]."""
  q = jax.random.normal(key, (1, q_len, 32, 128), jnp.bfloat16)
  k = jax.random.normal(jax.random.fold_in(key, 1), (1, q_len, 8, 128), jnp.bfloat16)
  v = jax.random.normal(jax.random.fold_in(key, 2), (1, q_len, 8, 128), jnp.bfloat16)

  def cudnn():
    return functools.partial(jax.nn.dot_product_attention, is_causal=True,
                             implementation="cudnn"), (q, k, v)

  def triton_mha():
    from jax.experimental.pallas.ops.gpu import attention  # pylint: disable=g-import-not-at-top
    rep = lambda x: jnp.repeat(x, 4, axis=2)
    return functools.partial(attention.mha, segment_ids=None, causal=True,
                             sm_scale=128 ** -0.5), (q, rep(k), rep(v))

  def mgpu():
    from jax.experimental.pallas.ops.gpu import attention_mgpu as am  # pylint: disable=g-import-not-at-top
    cfg = am.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2,
                          causal=True)
    # NOTE: attention_mgpu in JAX 0.11.2 fails on bf16 (dtype mismatch in its
    # epilogue), so it runs in float16, as in its own benchmark.
    f16 = lambda x: x.astype(jnp.float16)
    return functools.partial(am.attention, config=cfg), (f16(q), f16(k), f16(v))

  return {"cuDNN dense causal": cudnn,
          "Pallas Triton mha (dense, kv heads repeated)": triton_mha,
          "Pallas Mosaic GPU attention_mgpu (dense, float16)": mgpu}


def dense_rows(key, q_len, timed, names=None):
  """Times each baseline (all, or `names`); a failure becomes a NaN row."""
  rows = []
  fl = causal_flops(q_len, 0)
  for name, make in _dense_problems(key, q_len).items():
    if names is not None and name not in names:
      continue
    try:
      fn, a = make()
      t = timed(fn, *a, iters=10)
      rows.append(dict(name=name, us=t, tok_s=q_len / t * 1e6,
                       tflops=fl / t / 1e6))
    except Exception as e:  # pylint: disable=broad-except
      rows.append(dict(name=name, us=float("nan"), tok_s=0, tflops=0,
                       err=f"{type(e).__name__}: {str(e)[:200]}"))
    print(json.dumps(rows[-1]), flush=True)
  if names is None:
    a = jax.random.normal(key, (8192, 8192), jnp.bfloat16)
    b = jax.random.normal(jax.random.fold_in(key, 3), (8192, 8192), jnp.bfloat16)
    t = timed(jnp.dot, a, b, iters=10)
    rows.append(dict(name="bf16 matmul 8192^3", us=t, tok_s=0,
                     tflops=2 * 8192 ** 3 / t / 1e6))
    print(json.dumps(rows[-1]), flush=True)
  return rows
