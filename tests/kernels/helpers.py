"""Shared builders for the kernel tests: paged problems and a numpy oracle.

Caches are filled with NaN first and only the slots a sequence owns (below
its length) get finite values, so any kernel that reads an unused block, the
null block 0 or a slot past a sequence's length produces NaN and fails.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_dtypes
import numpy as np

import pallas_kernels
from pallas_kernels import quantization

# Interpret mode on CPU; the same tests run compiled on a GPU machine.
INTERPRET = jax.default_backend() != "gpu"
BACKEND = "triton"


@dataclasses.dataclass(frozen=True)
class Paged:
  """A paged cache plus per-sequence dense copies of its valid K/V."""
  kv_cache: np.ndarray  # [num_blocks, hkv, 2, bs, d], NaN outside owned slots
  block_tables: np.ndarray  # int32 [num_seqs, max_blocks]
  dense_k: list  # per sequence [kv_len, hkv, d] float64
  dense_v: list


def make_paged(rng, kv_lens, num_kv_heads, head_dim, block_size, dtype,
               extra_cols=1):
  """Random cache for sequences of `kv_lens` tokens in shuffled blocks."""
  need = [-(-n // block_size) for n in kv_lens]
  max_blocks = max(max(need), 1) + extra_cols
  num_blocks = 1 + sum(need) + 3  # null block + used + spare poisoned ones
  cache = np.full((num_blocks, num_kv_heads, 2, block_size, head_dim), np.nan,
                  np.float32)
  ids = rng.permutation(np.arange(1, num_blocks))
  tables = np.zeros((len(kv_lens), max_blocks), np.int32)
  dense_k, dense_v, used = [], [], 0
  for s, n in enumerate(kv_lens):
    own = ids[used:used + need[s]]
    used += need[s]
    # Unused table entries point at poisoned spare blocks (or block 0).
    spare = ids[-3:] if rng.random() < 0.5 else np.zeros(3, np.int64)
    tables[s] = np.concatenate([own, np.resize(spare, max_blocks - need[s])])
    kv = rng.standard_normal((n, num_kv_heads, 2, head_dim)).astype(np.float32)
    kv = kv.astype(dtype).astype(np.float32)  # exactly representable
    for t in range(n):
      cache[own[t // block_size], :, :, t % block_size, :] = kv[t]
    dense_k.append(kv[:, :, 0].astype(np.float64))
    dense_v.append(kv[:, :, 1].astype(np.float64))
  return Paged(cache.astype(dtype), tables, dense_k, dense_v)


def naive_attention(q, k, v, positions, scale, *, swap_kv=False,
                    causal_shift=0):
  """Dense float64 attention of q [n, hq, d] to k/v [ctx, hkv, d].

  Row i sees keys 0..positions[i] + causal_shift. `swap_kv` and
  `causal_shift` exist to build deliberately broken oracles.
  """
  if swap_kv:
    k, v = v, k
  n, hq, d = q.shape
  group = hq // k.shape[1]
  out = np.zeros((n, hq, d))
  for i in range(n):
    visible = positions[i] + 1 + causal_shift
    if visible <= 0:
      continue  # a mutated mask may leave nothing visible
    for h in range(hq):
      kh, vh = k[:visible, h // group], v[:visible, h // group]
      s = kh @ q[i, h].astype(np.float64) * scale
      p = np.exp(s - s.max())
      out[i, h] = p @ vh / p.sum()
  return out


def naive_decode(q, paged, lengths, scale, **mutation):
  """Oracle for decode: row b's token sits at position lengths[b] - 1."""
  out = np.zeros(q.shape)
  for b, n in enumerate(lengths):
    if n:
      out[b] = naive_attention(q[b:b + 1], paged.dense_k[b], paged.dense_v[b],
                               [n - 1], scale, **mutation)[0]
  return out


def naive_prefill(q, paged, q_lens, kv_lens, scale, **mutation):
  """Oracle for packed prefill; padding rows are zero."""
  out = np.zeros(q.shape)
  start = 0
  for s, (ql, kl) in enumerate(zip(q_lens, kv_lens)):
    if ql:
      pos = [kl - ql + i for i in range(ql)]
      out[start:start + ql] = naive_attention(
          q[start:start + ql], paged.dense_k[s], paged.dense_v[s], pos, scale,
          **mutation)
    start += ql
  return out


def rel_err(out, ref) -> float:
  """‖out - ref‖ / ‖ref‖ in float64; NaN anywhere gives inf."""
  out = np.asarray(out, np.float64)
  ref = np.asarray(ref, np.float64)
  if not np.isfinite(out).all():
    return float("inf")
  return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def prefill_problem(rng, paged, q_lens, kv_lens, num_q_heads: int, pad: int):
  """(paged_prefill_attention's args, the float64 oracle's output) for random
  bf16 queries (`pad` padding rows after the packed tokens) over `paged`
  (make_paged or make_paged_quantized)."""
  d = quantization.values_of(paged.kv_cache).shape[-1]
  q = rng.standard_normal((sum(q_lens) + pad, num_q_heads, d)).astype(ml_dtypes.bfloat16)
  cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
  args = (jax.numpy.asarray(q), device_cache(paged.kv_cache),
          jax.numpy.asarray(paged.block_tables), jax.numpy.asarray(cu),
          jax.numpy.asarray(kv_lens, np.int32))
  return args, naive_prefill(q.astype(np.float64), paged, q_lens, kv_lens, d ** -0.5)


def tolerance(dtype) -> float:
  """Relative-norm tolerance: bf16 operands ~2e-3 measured, f32 ~1e-7."""
  return 1e-2 if np.dtype(dtype).itemsize == 2 else 1e-5


# 8-bit caches (pallas_kernels/quantization.py): the names the engine uses.
QUANTIZED = ("int8", "float8_e4m3")


def poison_values(rng, shape, name):
  """Stored values for slots no sequence owns: NaN bits for e4m3 (0x7F), random int8."""
  if name == "float8_e4m3":
    return np.full(shape, 0x7F, np.uint8)
  return rng.integers(-127, 128, shape).astype(np.int8)


def make_paged_quantized(rng, kv_lens, num_kv_heads, head_dim, block_size, name,
                         extra_cols=1):
  """`make_paged` stored as the 8-bit cache `name` (quantized per token and head);
  unowned slots hold NaN scales (and NaN e4m3 values). The dense copies are the
  dequantized stored values, so the oracle sees exactly what the kernels must."""
  paged = make_paged(rng, kv_lens, num_kv_heads, head_dim, block_size, np.float32,
                     extra_cols)
  owned = np.isfinite(paged.kv_cache[..., 0])               # [nb, hkv, 2, bs]
  values, scales = (np.asarray(x) for x in quantization.quantize(
      jax.numpy.asarray(np.nan_to_num(paged.kv_cache)), quantization.storage_dtype(name)))
  values = np.where(owned[..., None], values,
                    poison_values(rng, values.shape, name)).astype(values.dtype)
  scales = np.where(owned, scales, np.nan).astype(np.float32)
  cache = quantization.QuantizedKV(values, scales)
  deq = np.asarray(quantization.dequantize(jax.numpy.asarray(values),
                                           jax.numpy.asarray(scales)), np.float64)
  dense_k, dense_v = [], []
  for s, n in enumerate(kv_lens):
    rows = [deq[paged.block_tables[s, t // block_size], :, :, t % block_size] for t in range(n)]
    kv = np.stack(rows) if rows else np.zeros((0, num_kv_heads, 2, head_dim))
    dense_k.append(kv[:, :, 0])
    dense_v.append(kv[:, :, 1])
  return Paged(cache, paged.block_tables, dense_k, dense_v)


def device_cache(cache):
  """A numpy cache (array or QuantizedKV of arrays) as JAX arrays."""
  return jax.tree_util.tree_map(jax.numpy.asarray, cache)


def assert_decode_matches(out, q, paged, args, lengths, scale, tol):
  """A decode output against the float64 oracle and the reference, zeros for
  empty rows; the tolerance must catch a swapped K/V and a length off by one.
  q: float64 queries; args: the kernel's (q, cache, tables, lengths)."""
  assert rel_err(out, naive_decode(q, paged, lengths, scale)) < tol
  ref = pallas_kernels.paged_decode_attention_reference(*args, scale=scale)
  assert rel_err(out, ref) < tol
  for b, n in enumerate(lengths):
    if n == 0:
      assert not out[b].any(), "padding row must be zeros"
  swapped = naive_decode(q, paged, lengths, scale, swap_kv=True)
  assert rel_err(out, swapped) > 10 * tol
  shifted = naive_decode(q, paged, lengths, scale, causal_shift=-1)
  assert rel_err(out, shifted) > tol
