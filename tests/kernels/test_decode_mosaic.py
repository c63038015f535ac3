"""The Mosaic GPU decode kernel against the oracles, its pipeline and dispatch.

On CPU it runs in Mosaic GPU interpret mode (a simulator of the warpgroups,
barriers and TMA copies), compiled on a GPU machine. Unused cache slots and
blocks hold NaN (helpers.make_paged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import pallas_kernels as pk
from pallas_kernels import decode_mosaic
from pallas_kernels import heuristics
from pallas_kernels import quantization
from pallas_kernels import tuning
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
C = decode_mosaic.DecodeMosaicConfig

CASES = [  # block_size, hq, hkv, d, lengths, config
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64)),  # GQA 4, padding row
    (16, 12, 4, 64, [16, 47, 0, 1, 95], C(block_kv=64, num_splits=5, stages=4)),
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=64, num_splits=2)),  # GQA 1
    (64, 8, 1, 64, [200, 64, 1], C(block_kv=64, stages=3)),  # GQA 8: no pad
    (128, 8, 2, 64, [129, 0, 256, 1], C(block_kv=64, num_splits=2)),  # slices
    (256, 9, 3, 64, [300, 1], C(block_kv=128)),  # GQA 3, 256-token blocks
    (16, 4, 1, 128, [700, 513], C(block_kv=128, num_splits=3)),  # ragged splits
]


def _problem(case, seed):
  block_size, hq, hkv, d, lengths, _ = case
  rng = np.random.default_rng(seed)
  paged = helpers.make_paged(rng, lengths, hkv, d, block_size, BF16)
  q = rng.standard_normal((len(lengths), hq, d)).astype(BF16)
  args = (jnp.asarray(q), jnp.asarray(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(lengths, jnp.int32))
  return q.astype(np.float64), paged, args


def _run(args, config, **kw):
  d = args[0].shape[-1]
  return np.asarray(decode_mosaic.decode_mosaic(
      *args, scale=d ** -0.5, config=config, interpret=helpers.INTERPRET, **kw),
                    np.float64)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"bs{c[0]}-{c[1]}x{c[2]}-{c[5]}")
def test_matches_oracle(case):
  lengths, config = case[4], case[5]
  q, paged, args = _problem(case, seed=case[0] + case[1])
  out = _run(args, config)
  scale = case[3] ** -0.5
  helpers.assert_decode_matches(out, q, paged, args, lengths, scale,
                                helpers.tolerance(BF16))


def test_split_counts_agree():
  """More splits than a row has steps leaves empty splits, which add nothing."""
  case = (16, 8, 2, 64, [5, 300, 0, 129], None)
  _, _, args = _problem(case, seed=11)
  outs = [_run(args, C(block_kv=64, num_splits=n)) for n in (1, 2, 3, 8)]
  for o in outs[1:]:
    np.testing.assert_allclose(o, outs[0], rtol=2e-2, atol=2e-2)
    assert helpers.rel_err(o, outs[0]) < helpers.tolerance(BF16)


def test_combine_splits_weights_by_log_sum_exp():
  """Two halves of a softmax merge into the whole; an all-empty row is zeros."""
  rng = np.random.default_rng(0)
  s = rng.standard_normal(6)
  v = rng.standard_normal((6, 4))
  halves = [(np.exp(s[i:i + 3]) @ v[i:i + 3] / np.exp(s[i:i + 3]).sum(),
             np.log2(np.exp(s[i:i + 3]).sum())) for i in (0, 3)]
  part = np.zeros((2, 1, 2, 1, 4))
  lse = np.full((2, 1, 2, 1), decode_mosaic.kernel.NEG_BIG)
  for i, (o, l) in enumerate(halves):
    part[0, 0, i, 0], lse[0, 0, i, 0] = o, l
  out = np.asarray(decode_mosaic.combine_splits(jnp.asarray(part), jnp.asarray(lse)))
  want = np.exp(s) @ v / np.exp(s).sum()
  np.testing.assert_allclose(out[0, 0, 0], want, rtol=1e-5)
  assert not out[1].any()


@pytest.mark.skipif(not helpers.INTERPRET,
                    reason="the race detector is part of the CPU interpreter")
def test_pipeline_has_no_data_races():
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call  # pylint: disable=g-import-not-at-top
  case = (16, 8, 2, 64, [37, 200], None)
  q, paged, args = _problem(case, seed=1)
  out = np.asarray(decode_mosaic.decode_mosaic(
      *args, scale=0.125, config=C(block_kv=64, num_splits=2),
      interpret=plgpu.InterpretGPUParams(detect_races=True)), np.float64)
  assert helpers.rel_err(out, helpers.naive_decode(q, paged, [37, 200], 0.125)) < (
      helpers.tolerance(BF16))
  assert not interpret_pallas_call.get_races().races_found


@pytest.mark.parametrize("shape,config", [
    ((16, 32, 8, 128), C()),  # the 8B's heads
    ((16, 32, 8, 128), C(block_kv=64, stages=4, num_splits=4)),
    ((64, 32, 8, 128), C(block_kv=128, stages=3)),
    ((128, 9, 3, 64), C(block_kv=64, num_splits=2)),
    ((256, 16, 1, 256), C(block_kv=64)),
], ids=str)
def test_lowers_for_hopper(shape, config):
  """Pallas -> Mosaic GPU lowering for sm_90 (P V from registers, which
  interpret mode cannot run): layouts, TMA shapes and the shared memory."""
  block_size, hq, hkv, d = shape
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  f = jax.jit(lambda *a: decode_mosaic.decode_mosaic(
      *a, scale=d ** -0.5, config=config))
  exported = jax.export.export(f, platforms=["cuda"])(
      spec(64, hq, d), spec(512, hkv, 2, block_size, d),
      spec(64, 32, dt=jnp.int32), spec(64, dt=jnp.int32))
  assert "mosaic_gpu" in exported.mlir_module()


def test_shared_memory_estimate_bounds_the_lowering():
  """Every tiling supports() accepts lowers; the first it refuses does not."""
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  q, cache = spec(8, 32, 128), spec(64, 8, 2, 16, 128)
  fits = C(block_kv=128, stages=3)
  over = C(block_kv=128, stages=3, num_splits=2)
  assert decode_mosaic.supports(q, cache, fits)
  assert not decode_mosaic.supports(q, cache, over)
  lower = lambda cfg: jax.export.export(jax.jit(
      lambda *a: decode_mosaic.decode_mosaic(*a, scale=0.1, config=cfg)),
      platforms=["cuda"])(q, cache, spec(8, 8, dt=jnp.int32), spec(8, dt=jnp.int32))
  lower(fits)
  with pytest.raises(ValueError, match="shared memory"):
    lower(over)


def test_supports_16_bit_q_over_16_or_8_bit_caches_with_head_dim_multiple_of_64():
  q = lambda hq, d, dt=jnp.bfloat16: jnp.zeros((4, hq, d), dt)
  cache = lambda d, dt=jnp.bfloat16: jnp.zeros((3, 2, 2, 16, d), dt)
  ok = lambda q, c: decode_mosaic.supports(q, c, C())
  assert ok(q(8, 128), cache(128))
  assert not ok(q(8, 128, jnp.float32), cache(128, jnp.float32))
  assert not ok(q(8, 96), cache(96))
  assert not ok(q(256, 64), cache(64))  # group 128
  quantized = lambda d: quantization.QuantizedKV(
      jnp.zeros((3, 2, 2, 16, d), jnp.int8), jnp.zeros((3, 2, 2, 16), jnp.float32))
  assert ok(q(8, 128), quantized(128))  # decode_mosaic_q8.py
  assert not ok(q(8, 128, jnp.float32), quantized(128))
  assert not ok(q(8, 96), quantized(96))


def test_config_rejects_bad_tiles():
  with pytest.raises(ValueError, match="block_kv"):
    C(block_kv=32)
  with pytest.raises(ValueError, match="stages"):
    C(stages=1)
  with pytest.raises(ValueError, match="num_splits"):
    C(num_splits=0)


def test_backend_mosaic_runs_it_for_bf16_and_8_bit_where_the_table_measured_it_faster(
    monkeypatch):
  """bf16 goes to decode_mosaic with the tuned tiling; float32 runs Triton; an
  8-bit cache runs Mosaic only where its nearest table entry beat Triton."""
  calls = []
  real = decode_mosaic.decode_mosaic
  monkeypatch.setattr(decode_mosaic, "decode_mosaic",
                      lambda *a, **k: calls.append(k["config"]) or real(*a, **k))
  case = (16, 8, 2, 64, [37, 130], None)
  q, paged, args = _problem(case, seed=4)
  out = pk.paged_decode_attention(*args, backend="mosaic", interpret=helpers.INTERPRET)
  want = helpers.naive_decode(q, paged, case[4], 0.125)
  assert helpers.rel_err(np.asarray(out, np.float64), want) < helpers.tolerance(BF16)
  assert calls == [heuristics.decode_mosaic_config(2, 2, args[2].shape[1], 16)]
  pk.paged_decode_attention(*args, backend="mosaic", num_splits=2,
                            interpret=helpers.INTERPRET)
  assert calls[-1].num_splits == 2
  f32 = [a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in args]
  out = pk.paged_decode_attention(*f32, backend="mosaic", interpret=helpers.INTERPRET)
  assert len(calls) == 2  # Triton ran it
  assert helpers.rel_err(np.asarray(out, np.float64), want) < helpers.tolerance(BF16)
  cache = quantization.QuantizedKV(*quantization.quantize(jnp.nan_to_num(args[1]), jnp.int8))
  ref = pk.paged_decode_attention_reference(args[0], cache, *args[2:])
  entry = dict(batch=2, context=4096, kv_heads=2, head_dim=64, block_size=16, itemsize=1,
               kv_cache_dtype="int8", block_kv=64, stages=3, num_splits=1)
  for us, ran in ((300.0, False), (200.0, True), (None, False)):  # Triton took 250
    table = {"decode_mosaic": [dict(entry, us=us, triton_us=250.0)] if us else []}
    monkeypatch.setattr(tuning, "load_table", lambda kind, t=table: t)
    before = len(calls)
    out = pk.paged_decode_attention(args[0], cache, *args[2:], backend="mosaic",
                                    interpret=helpers.INTERPRET)
    assert len(calls) - before == ran, (us, calls)
    assert helpers.rel_err(np.asarray(out, np.float64), ref) < helpers.tolerance(BF16)
  assert calls[-1] == C(block_kv=64, stages=3)
