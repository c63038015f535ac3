"""8-bit KV caches (int8, float8_e4m3): the quantization rule, the quantizing write, and
decode / prefill dequantizing on the fly, Triton (interpret mode on CPU) and references
against a float64 oracle over the dequantized stored values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

import pallas_kernels as pk
from pallas_kernels import quantization
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
NAMES = helpers.QUANTIZED


@pytest.mark.parametrize("name", NAMES)
def test_quantize_round_trip_error_is_bounded(name):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 3, 128)) * rng.lognormal(0, 2, (64, 3, 1))
  x[5, 1] = 0.0                                            # an all-zero vector
  values, scales = quantization.quantize(jnp.asarray(x, jnp.float32),
                                         quantization.storage_dtype(name))
  assert values.dtype == quantization.storage_dtype(name) and scales.shape == (64, 3)
  back = np.asarray(quantization.dequantize(values, scales), np.float64)
  amax = np.abs(x).max(-1, keepdims=True)
  plain = amax[..., 0] / quantization.FORMATS[name].qmax       # max |x| at the largest value
  scale = np.asarray(scales, np.float64)
  assert scales[5, 1] == 0 and not back[5, 1].any()
  err = np.abs(back - x)
  if name == "int8":     # round to nearest: half a step of amax / 127
    np.testing.assert_allclose(scale, plain, rtol=1e-6)
    assert (err <= 0.5 * amax / 127 * (1 + 1e-5)).all()
  else:                  # e4m3: 3 mantissa bits (subnormals: a step of 2**-9 of the scale)
    # The scale is one of E4M3_SHIFTS in the octave above the plain one (none clips), the
    # one nearest x: never farther than the plain scale's vector.
    shifts = quantization.E4M3_SHIFTS
    k = np.log2(np.where(plain > 0, scale / np.where(plain > 0, plain, 1), 1)) * shifts
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert (0 <= np.round(k)).all() and (np.round(k) < shifts).all() and len(np.unique(k.round())) > 4
    assert (err <= np.abs(x) * 2.0 ** -4 + scale[..., None] * 2.0 ** -10 + 1e-30).all()
    fmt = quantization.FORMATS[name]
    y = np.clip(x / np.where(plain > 0, plain, 1)[..., None], -448, 448)
    plain_back = y.astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * plain[..., None]
    sq = lambda e: (e ** 2).sum(-1)
    assert (sq(err) <= sq(plain_back - x) * (1 + 1e-5) + 1e-30).all() and fmt.qmax == 448
    assert sq(err).sum() < 0.9 * sq(plain_back - x).sum()
  assert 0 < err.mean() / np.abs(x).mean() < (1e-2 if name == "int8" else 4e-2)


@pytest.mark.parametrize("name", NAMES)
def test_two_terms_take_the_error_down_by_the_format_twice(name):
  """quantize_two_terms (the Mosaic decode's q with qk_8bit): the second term is the
  first's residual quantized, so the sum's error is one format step of a step."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((32, 2, 128)) * rng.lognormal(0, 2, (32, 2, 1))
  x[3, 0] = 0.0                                            # an all-zero vector
  storage = quantization.storage_dtype(name)
  values, scales = quantization.quantize_two_terms(jnp.asarray(x, jnp.float32), storage)
  assert values.shape == (2, 32, 2, 128) and values.dtype == storage
  assert scales.shape == (2, 32, 2)
  one = quantization.dequantize(*quantization.quantize(jnp.asarray(x, jnp.float32), storage))
  np.testing.assert_array_equal(np.asarray(quantization.dequantize(values[0], scales[0])),
                                np.asarray(one))           # the first term is quantize's
  back = np.asarray(quantization.dequantize(values[0], scales[0])
                    + quantization.dequantize(values[1], scales[1]), np.float64)
  assert not back[3, 0].any()
  err, amax = np.abs(back - x), np.abs(x).max(-1, keepdims=True)
  if name == "int8":     # half a step of (half a step of amax / 127) / 127
    assert (err <= amax / (4 * 127 ** 2) * (1 + 1e-4)).all()
  else:                  # 3 + 3 mantissa bits, subnormals a step of a step
    assert (err <= np.abs(x) * 2.0 ** -8 + amax / 448 * 2.0 ** -12).all()
  one_err = np.abs(np.asarray(one, np.float64) - x).mean()
  assert err.mean() < one_err / (50 if name == "int8" else 8)


def _write_problem(rng, name, block_size=16, hkv=3, d=64, real=11, padded=3):
  num_blocks = 2 + -(-real // block_size) + 1
  cache = quantization.QuantizedKV(
      helpers.poison_values(rng, (num_blocks, hkv, 2, block_size, d), name),
      rng.random((num_blocks, hkv, 2, block_size)).astype(np.float32))
  slots = rng.permutation(np.arange(block_size, num_blocks * block_size))[:real]
  slots = np.concatenate([slots, np.zeros(padded, np.int64)]).astype(np.int32)
  k = rng.standard_normal((len(slots), hkv, d)).astype(np.float32)
  v = 3 * rng.standard_normal((len(slots), hkv, d)).astype(np.float32)
  return cache, k, v, slots


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["xla", helpers.BACKEND])
def test_write_quantizes_each_token_and_touches_nothing_else(name, backend):
  rng = np.random.default_rng(len(name))
  cache, k, v, slots = _write_problem(rng, name)
  out = pk.write_kv(helpers.device_cache(cache), jnp.asarray(k), jnp.asarray(v),
                    jnp.asarray(slots), backend=backend, interpret=helpers.INTERPRET)
  values, scales = (np.array(x) for x in out)
  bs = values.shape[3]
  want_v, want_s = quantization.quantize(jnp.asarray(np.stack([k, v], 2)),
                                         values.dtype)        # [n, hkv, 2, (d)]
  for t, s in enumerate(slots[slots >= bs]):
    np.testing.assert_array_equal(values[s // bs, :, :, s % bs], want_v[t])
    np.testing.assert_array_equal(scales[s // bs, :, :, s % bs], want_s[t])
    values[s // bs, :, :, s % bs] = cache.values[s // bs, :, :, s % bs]
    scales[s // bs, :, :, s % bs] = cache.scales[s // bs, :, :, s % bs]
  # Padded tokens landed in the null block 0 only; everything else is untouched.
  np.testing.assert_array_equal(values[1:], cache.values[1:])
  np.testing.assert_array_equal(scales[1:], cache.scales[1:])
  deq = np.asarray(quantization.dequantize(*out))
  step = np.abs(k[0]).max(-1) / 127
  got = deq[slots[0] // bs, :, 0, slots[0] % bs]
  assert (np.abs(got - k[0]) <= (0.51 * step[:, None] if name == "int8"
                                 else np.abs(k[0]) / 16 + 1e-6)).all()


@pytest.mark.parametrize("name", NAMES)
def test_write_is_in_place_when_donated(name):
  cache = quantization.empty((4, 2, 2, 8, 64), name)
  step = jax.jit(lambda c, k, v, s: pk.write_kv(c, k, v, s, backend=helpers.BACKEND,
                                                interpret=helpers.INTERPRET),
                 donate_argnums=0)
  ptrs = [x.unsafe_buffer_pointer() for x in cache]
  out = step(cache, jnp.ones((3, 2, 64)), jnp.ones((3, 2, 64)), jnp.arange(8, 11, dtype=jnp.int32))
  assert [x.unsafe_buffer_pointer() for x in out] == ptrs
  assert np.asarray(out.scales)[1, :, :, :3].all() and not np.asarray(out.scales)[2:].any()


DECODE_CASES = [  # block_size, hq, hkv, d, q dtype, lengths, num_splits
    (8, 4, 4, 64, np.float32, [1, 8, 17, 0], None),
    (16, 12, 4, 64, BF16, [16, 47, 0, 1], 2),       # GQA 3
    (32, 16, 4, 128, np.float32, [64, 100, 31], 3),
    (64, 8, 1, 64, BF16, [200, 64, 1], None),       # GQA 8
    (256, 9, 3, 64, np.float32, [300, 1], None),
    (16, 32, 8, 128, BF16, [1000, 333], 4),          # Llama-3-8B heads, split-K
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"bs{c[0]}-{c[1]}x{c[2]}")
def test_decode_dequantizes_like_the_oracle(case, name):
  block_size, hq, hkv, d, dtype, lengths, num_splits = case
  rng = np.random.default_rng(block_size + hq)
  paged = helpers.make_paged_quantized(rng, lengths, hkv, d, block_size, name)
  q = rng.standard_normal((len(lengths), hq, d)).astype(dtype)
  args = (jnp.asarray(q), helpers.device_cache(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(lengths, jnp.int32))
  tol = helpers.tolerance(dtype)
  q64, scale = q.astype(np.float64), d ** -0.5
  want = helpers.naive_decode(q64, paged, lengths, scale)
  ref = np.asarray(pk.paged_decode_attention_reference(*args), np.float64)
  assert helpers.rel_err(ref, want) < tol
  out = np.asarray(pk.paged_decode_attention(*args, backend=helpers.BACKEND, num_splits=num_splits,
                                             interpret=helpers.INTERPRET), np.float64)
  assert helpers.rel_err(out, want) < tol
  for b, n in enumerate(lengths):
    if n == 0:
      assert not out[b].any()
  assert helpers.rel_err(out, helpers.naive_decode(q64, paged, lengths, scale,
                                                   swap_kv=True)) > 10 * tol


PREFILL_CASES = [  # block_size, hq, hkv, d, q dtype, q_lens, kv_lens
    (8, 4, 4, 64, np.float32, [5, 0, 9], [5, 0, 30]),
    (16, 12, 4, 64, BF16, [7, 20, 3], [23, 20, 50]),  # chunks start mid-block
    (64, 8, 1, 64, BF16, [65, 10], [130, 10]),
    (128, 6, 2, 64, np.float32, [33], [300]),
    (16, 8, 2, 128, BF16, [128, 16], [256, 16]),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: f"bs{c[0]}-{c[1]}x{c[2]}")
def test_prefill_dequantizes_like_the_oracle(case, name):
  block_size, hq, hkv, d, dtype, q_lens, kv_lens = case
  rng = np.random.default_rng(block_size * 3 + hq)
  paged = helpers.make_paged_quantized(rng, kv_lens, hkv, d, block_size, name)
  q = rng.standard_normal((sum(q_lens) + 5, hq, d)).astype(dtype)
  cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
  args = (jnp.asarray(q), helpers.device_cache(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(cu), jnp.asarray(kv_lens, jnp.int32))
  tol = helpers.tolerance(dtype)
  q64, scale = q.astype(np.float64), d ** -0.5
  want = helpers.naive_prefill(q64, paged, q_lens, kv_lens, scale)
  assert helpers.rel_err(pk.paged_prefill_attention_reference(*args), want) < tol
  out = np.asarray(pk.paged_prefill_attention(*args, backend=helpers.BACKEND,
                                              interpret=helpers.INTERPRET), np.float64)
  assert helpers.rel_err(out, want) < tol
  assert not out[sum(q_lens):].any(), "padded tokens must be zeros"
  for mutation in (dict(swap_kv=True), dict(causal_shift=-1)):
    assert helpers.rel_err(out, helpers.naive_prefill(q64, paged, q_lens, kv_lens, scale,
                                                      **mutation)) > tol, mutation


@pytest.mark.parametrize("over,msg", [
    (dict(scales=jnp.zeros((5, 2, 2, 8))), "scales must have shape"),
    (dict(scales=jnp.zeros((5, 2, 2, 16), jnp.bfloat16)), "scales must be float32"),
    (dict(values=jnp.zeros((5, 2, 2, 16, 64), jnp.bfloat16)), "values must be int8 or uint8"),
])
def test_malformed_quantized_caches_are_refused(over, msg):
  parts = dict(values=jnp.zeros((5, 2, 2, 16, 64), jnp.int8), scales=jnp.zeros((5, 2, 2, 16)))
  parts.update(over)
  cache = quantization.QuantizedKV(**parts)
  with pytest.raises(ValueError, match=msg):
    pk.paged_decode_attention(jnp.zeros((2, 4, 64)), cache, jnp.zeros((2, 3), jnp.int32),
                              jnp.zeros((2,), jnp.int32), backend="xla")
  with pytest.raises(ValueError, match=msg):
    pk.write_kv(cache, jnp.zeros((1, 2, 64)), jnp.zeros((1, 2, 64)), jnp.zeros((1,), jnp.int32))


@pytest.mark.parametrize("name", NAMES)
def test_triton_kernels_lower_for_hopper(name):
  """Pallas -> Triton IR for sm_90 of the three kernels on an 8-bit cache, on a CPU
  machine (an abstract H200): catches a cast or an op the Triton lowering lacks;
  not ptxas or the hardware."""
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  i32 = lambda *s: spec(*s, dt=jnp.int32)
  cache = pk.QuantizedKV(spec(64, 8, 2, 16, 128, dt=quantization.storage_dtype(name)),
                         spec(64, 8, 2, 16, dt=jnp.float32))
  h200 = AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=h200)
  unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  calls = [
      (lambda *a: pk.paged_decode_attention(*a, backend="triton", num_splits=1),
       (spec(4, 32, 128), cache, i32(4, 16), i32(4))),
      (lambda *a: pk.paged_decode_attention(*a, backend="triton", num_splits=4),
       (spec(4, 32, 128), cache, i32(4, 16), i32(4))),
      (lambda *a: pk.paged_prefill_attention(*a, backend="triton"),
       (spec(64, 32, 128), cache, i32(4, 16), i32(5), i32(4))),
      (lambda *a: pk.write_kv(*a, backend="triton"),
       (cache, spec(8, 8, 128), spec(8, 8, 128), i32(8))),
  ]
  with jax.sharding.use_abstract_mesh(mesh):
    for fn, args in calls:
      exported = jax.export.export(jax.jit(fn), platforms=["cuda"],
                                   disabled_checks=unchecked)(*args)
      assert "xla.gpu.triton" in exported.mlir_module()
