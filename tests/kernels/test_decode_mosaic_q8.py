"""The Mosaic GPU decode over 8-bit caches (decode_mosaic_q8.py) against a
float64 oracle over the dequantized stored values.

On CPU it runs in Mosaic GPU interpret mode (four warpgroups, their barriers
and TMA copies simulated), compiled on a GPU machine. Unowned slots hold NaN
scales and NaN e4m3 bits (helpers.make_paged_quantized): a tail step that let
one through would turn its row's output into NaN.
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
from pallas_kernels import decode_mosaic_items
from pallas_kernels import decode_mosaic_q8 as q8
from pallas_kernels import quantization
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
C = decode_mosaic.DecodeMosaicConfig
NAMES = helpers.QUANTIZED

CASES = [  # block_size, hq, hkv, d, lengths, config
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64)),  # GQA 4, padding row
    (16, 12, 4, 64, [16, 47, 1, 95], C(block_kv=64, num_splits=3, stages=4)),
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=64, num_splits=2)),  # GQA 1
    (64, 8, 1, 64, [200, 64, 1], C(block_kv=64, stages=3)),  # GQA 8
    (256, 9, 3, 64, [300, 1], C(block_kv=128)),  # GQA 3, 256-token blocks
    (16, 4, 1, 128, [700, 513], C(block_kv=64, num_splits=3, stages=5)),  # ragged
    # Sᵀ by 8-bit wgmma (q in two 8-bit terms), one or two V converters
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64, qk_8bit=True)),
    (256, 9, 3, 64, [300, 1], C(block_kv=128, qk_8bit=True, v_converters=2)),
    (16, 4, 1, 128, [700, 513], C(block_kv=128, num_splits=3, stages=3, qk_8bit=True,
                                  v_converters=2)),
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=128, v_converters=2)),  # K still in bf16
    # two KV heads a CTA (streams), each its compute warpgroup and V converter
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64, streams=2)),
    (16, 12, 4, 64, [16, 47, 1, 95], C(block_kv=64, num_splits=3, stages=4, streams=2,
                                       qk_8bit=True)),
    # fewer CTAs than items, each taking items in turn: the ring's slots and
    # phases run on over items of different lengths (empty ones included)
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64, ctas=2)),
    (16, 4, 1, 128, [700, 513], C(block_kv=64, stages=3, ctas=1)),
    (16, 12, 4, 64, [16, 47, 1, 95], C(block_kv=64, num_splits=3, stages=4, streams=2,
                                       qk_8bit=True, ctas=5)),
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=64, num_splits=2, ctas=64)),  # > items
    # the memory warpgroup's warps issuing shares of the copies
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=64, num_splits=2, issuers=2)),  # K | V
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64, streams=2, issuers=2)),  # by stream
    (16, 12, 4, 64, [16, 47, 1, 95], C(block_kv=64, num_splits=3, stages=4, streams=2,
                                       qk_8bit=True, ctas=5, issuers=4)),
    # dynamic tickets (in interpret mode the static ones, through the ring):
    # one CTA wrapping the ring's slots 8 times over items with no steps
    (8, 4, 4, 64, [1, 8, 17, 64], C(block_kv=64, num_splits=2, ctas=1, dynamic=True)),
    (16, 8, 2, 64, [37, 0, 130], C(block_kv=64, ctas=2, dynamic=True)),
    (16, 12, 4, 64, [16, 47, 1, 95], C(block_kv=64, num_splits=3, stages=4, streams=2,
                                       qk_8bit=True, ctas=5, issuers=4, dynamic=True)),
]


def applies(config, name) -> bool:
  """qk_8bit is int8's only (decode_mosaic.supports)."""
  return name == "int8" or not config.qk_8bit


def with_names(configs, key=lambda c: c):
  """(item, cache dtype name) pairs where the item's config applies."""
  return [(c, n) for c in configs for n in NAMES if applies(key(c), n)]


def _problem(case, name, seed):
  block_size, hq, hkv, d, lengths, _ = case
  rng = np.random.default_rng(seed)
  paged = helpers.make_paged_quantized(rng, lengths, hkv, d, block_size, name)
  q = rng.standard_normal((len(lengths), hq, d)).astype(BF16)
  args = (jnp.asarray(q), helpers.device_cache(paged.kv_cache),
          jnp.asarray(paged.block_tables), jnp.asarray(lengths, jnp.int32))
  return q.astype(np.float64), paged, args


def _run(args, config, interpret=helpers.INTERPRET):
  d = args[0].shape[-1]
  return np.asarray(decode_mosaic.decode_mosaic(
      *args, scale=d ** -0.5, config=config, interpret=interpret), np.float64)


@pytest.mark.parametrize("case,name", with_names(CASES, key=lambda c: c[5]), ids=lambda x: (
    f"bs{x[0]}-{x[1]}x{x[2]}-{x[5]}" if isinstance(x, tuple) else x))
def test_matches_oracle(case, name):
  lengths, config = case[4], case[5]
  q, paged, args = _problem(case, name, seed=case[0] + case[1])
  assert decode_mosaic.supports(args[0], args[1], config)
  out = _run(args, config)
  scale = case[3] ** -0.5
  assert np.isfinite(out).all(), "a poisoned slot reached the output"
  helpers.assert_decode_matches(out, q, paged, args, lengths, scale,
                                helpers.tolerance(BF16))


def test_gather_scales_puts_each_row_in_token_order_zero_past_its_length():
  rng = np.random.default_rng(3)
  scales = rng.standard_normal((7, 2, 2, 4)).astype(np.float32)
  tables = np.array([[3, 1, 6], [2, 0, 0]], np.int32)
  lengths = np.array([11, 3], np.int32)
  gather = lambda: np.asarray(q8.gather_scales(
      jnp.asarray(scales), jnp.asarray(tables), jnp.asarray(lengths), 64))
  got = gather()
  assert got.shape == (2, 2, 2, 64) and got.dtype == np.float16
  for b, n in enumerate(lengths):
    for t in range(n):
      np.testing.assert_array_equal(
          got[b, :, :, t], scales[tables[b, t // 4], :, :, t % 4].astype(np.float16))
    assert not got[b, :, :, n:].any()
  # f16's range: a scale past its largest is clamped, not inf
  scales[3, 0, 0, 0] = 1e6
  assert gather()[0, 0, 0, 0] == np.finfo(np.float16).max


@pytest.mark.skipif(not helpers.INTERPRET,
                    reason="the race detector is part of the CPU interpreter")
@pytest.mark.parametrize("config,name", with_names([
    C(block_kv=64, stages=3, num_splits=2),
    C(block_kv=128, stages=3, num_splits=2, qk_8bit=True, v_converters=2),
    C(block_kv=64, stages=2, num_splits=2, streams=2),
    C(block_kv=64, stages=2, streams=2, ctas=1, issuers=2),
    C(block_kv=64, stages=2, streams=2, ctas=1, issuers=2, dynamic=True)]), ids=str)
def test_pipeline_has_no_data_races(name, config):
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call  # pylint: disable=g-import-not-at-top
  case = (16, 8, 2, 64, [37, 200], None)
  q, paged, args = _problem(case, name, seed=1)
  out = _run(args, config, interpret=plgpu.InterpretGPUParams(detect_races=True))
  assert helpers.rel_err(out, helpers.naive_decode(q, paged, [37, 200], 0.125)) < (
      helpers.tolerance(BF16))
  assert not interpret_pallas_call.get_races().races_found


@pytest.mark.parametrize("shape,config,name", [(*item, n) for item, n in with_names([
    ((16, 32, 8, 128), C(block_kv=128, stages=2)),  # the 8B's heads
    ((16, 32, 8, 128), C(block_kv=64, stages=6, num_splits=4)),
    ((8, 32, 8, 128), C(block_kv=64, stages=4)),
    ((128, 9, 3, 64), C(block_kv=64, num_splits=2)),
    ((16, 32, 8, 128), C(block_kv=128, stages=4, qk_8bit=True, v_converters=2)),
    ((16, 32, 8, 128), C(block_kv=128, stages=2, num_splits=4, qk_8bit=True)),
    ((128, 9, 3, 64), C(block_kv=64, qk_8bit=True)),
    ((16, 32, 8, 128), C(block_kv=128, stages=4, v_converters=2)),
    ((16, 32, 8, 128), C(block_kv=64, stages=4, streams=2, qk_8bit=True)),
    ((16, 32, 8, 128), C(block_kv=64, stages=3, streams=2)),
    ((16, 32, 8, 128), C(block_kv=64, stages=3, streams=2, num_splits=2)),
    ((16, 32, 8, 128), C(block_kv=64, stages=4, streams=2, qk_8bit=True, ctas=132)),
    ((16, 32, 8, 128), C(block_kv=64, stages=3, streams=2, num_splits=2, ctas=132)),
    ((16, 32, 8, 128), C(block_kv=64, stages=4, streams=2, qk_8bit=True, ctas=132,
                         issuers=2)),
    ((16, 32, 8, 128), C(block_kv=64, stages=3, streams=2, ctas=132, issuers=4)),
    ((16, 32, 8, 128), C(block_kv=128, stages=4, issuers=2)),
], key=lambda item: item[1])], ids=str)
def test_lowers_for_hopper(shape, config, name):
  """Pallas -> Mosaic GPU lowering for sm_90: the four warpgroups' layouts,
  the 8-bit TMA shapes, the shared memory."""
  block_size, hq, hkv, d = shape
  spec = jax.ShapeDtypeStruct
  storage = quantization.storage_dtype(name)
  cache = quantization.QuantizedKV(spec((512, hkv, 2, block_size, d), storage),
                                   spec((512, hkv, 2, block_size), jnp.float32))
  assert decode_mosaic.supports(spec((64, hq, d), jnp.bfloat16), cache, config)
  f = jax.jit(lambda *a: decode_mosaic.decode_mosaic(*a, scale=d ** -0.5, config=config))
  exported = jax.export.export(f, platforms=["cuda"])(
      spec((64, hq, d), jnp.bfloat16), cache, spec((64, 32), jnp.int32),
      spec((64,), jnp.int32))
  assert "paged_decode_mosaic_q8" in exported.mlir_module()


@pytest.mark.parametrize("streams", [1, 2])
def test_each_stream_reduces_in_its_own_scratch(streams, monkeypatch):
  """The sm_90 lowering gives each compute warpgroup's cross-warp reductions
  (the softmax's max, the final row sums) their own shared-memory scratch:
  one offset per stream, REDUCTION_SCRATCH apart (decode_mosaic_q8's
  _behind_pads; side by side, two streams raced on one and were wrong on the
  H100). Read from the memref.view each reduction is lowered with."""
  from jax.experimental.mosaic.gpu import fragmented_array  # pylint: disable=g-import-not-at-top
  offsets = []
  reduce = fragmented_array.FragmentedArray.reduce

  def spy(self, op, axis, scratch=None, **kwargs):
    if scratch is not None:  # memref.view(base, offset): offset an arith.constant
      offsets.append(scratch.owner.operands[1].owner.attributes["value"].value)
    return reduce(self, op, axis, scratch, **kwargs)

  monkeypatch.setattr(fragmented_array.FragmentedArray, "reduce", spy)
  spec = jax.ShapeDtypeStruct
  cache = quantization.QuantizedKV(spec((512, 8, 2, 16, 128), jnp.int8),
                                   spec((512, 8, 2, 16), jnp.float32))
  config = C(block_kv=64, stages=3, streams=streams)
  f = jax.jit(lambda *a: decode_mosaic.decode_mosaic(*a, scale=0.125, config=config))
  jax.export.export(f, platforms=["cuda"])(
      spec((64, 32, 128), jnp.bfloat16), cache, spec((64, 32), jnp.int32),
      spec((64,), jnp.int32))
  assert len(offsets) == 3 * streams  # per stream: two loops' max, the sums
  starts = sorted(set(offsets))
  assert len(starts) == streams
  assert all(b - a >= q8.REDUCTION_SCRATCH for a, b in zip(starts, starts[1:]))


def test_the_8_bit_options_are_refused_where_they_do_not_apply():
  spec = jax.ShapeDtypeStruct
  q = spec((8, 32, 128), jnp.bfloat16)
  bf16 = spec((64, 8, 2, 16, 128), jnp.bfloat16)
  int8 = quantization.QuantizedKV(spec((64, 8, 2, 16, 128), jnp.int8),
                                  spec((64, 8, 2, 16), jnp.float32))
  e4m3 = quantization.QuantizedKV(spec((64, 8, 2, 16, 128), jnp.uint8),
                                  spec((64, 8, 2, 16), jnp.float32))
  for cfg in (C(qk_8bit=True), C(block_kv=128, v_converters=2)):
    assert decode_mosaic.supports(q, int8, cfg)
    assert not decode_mosaic.supports(q, bf16, cfg)  # the 16-bit kernel has neither
  # e4m3's 8-bit wgmma was wrong on the H100 (2.5e-2): its K goes through bf16.
  assert not decode_mosaic.supports(q, e4m3, C(qk_8bit=True))
  assert decode_mosaic.supports(q, e4m3, C(block_kv=128, v_converters=2))
  for bad in (dict(block_kv=64, v_converters=2), dict(v_converters=3)):
    with pytest.raises(ValueError, match="v_converters"):
      C(**bad)
  # two streams: 8-bit caches only, one V converter each, the KV heads in pairs
  assert decode_mosaic.supports(q, int8, C(block_kv=64, streams=2))
  assert not decode_mosaic.supports(q, bf16, C(block_kv=64, streams=2))
  odd = quantization.QuantizedKV(spec((64, 1, 2, 16, 128), jnp.int8),
                                 spec((64, 1, 2, 16), jnp.float32))
  assert not decode_mosaic.supports(spec((8, 4, 128), jnp.bfloat16), odd,
                                    C(block_kv=64, streams=2))
  for bad in (dict(block_kv=128, streams=2, v_converters=2), dict(streams=3)):
    with pytest.raises(ValueError, match="streams"):
      C(**bad)
  # CTAs taking items in turn: the 8-bit kernel's only
  assert decode_mosaic.supports(q, int8, C(ctas=132))
  assert not decode_mosaic.supports(q, bf16, C(ctas=132))
  with pytest.raises(ValueError, match="ctas"):
    C(ctas=-1)
  # warps issuing the copies: at most one a (stream, K or V)
  assert decode_mosaic.supports(q, int8, C(block_kv=64, streams=2, issuers=4))
  assert not decode_mosaic.supports(q, bf16, C(issuers=2))
  for bad in (dict(issuers=4), dict(issuers=3, streams=2, block_kv=64)):
    with pytest.raises(ValueError, match="issuers"):
      C(**bad)


def test_shared_memory_counts_the_8_bit_stages():
  """The 16-bit stages are q8.STAGES16 whatever `stages`; the 8-bit ring is
  `stages` deep: the first tiling supports() refuses does not lower."""
  spec = jax.ShapeDtypeStruct
  q = spec((8, 32, 128), jnp.bfloat16)
  cache = quantization.QuantizedKV(spec((64, 8, 2, 16, 128), jnp.int8),
                                   spec((64, 8, 2, 16), jnp.float32))
  fits, over = C(block_kv=128, stages=4), C(block_kv=128, stages=5)
  assert decode_mosaic.supports(q, cache, fits)
  assert not decode_mosaic.supports(q, cache, over)
  assert decode_mosaic.supports(q, cache, C(block_kv=64, stages=8))
  # two streams hold two of everything: 128-key steps no longer fit
  assert decode_mosaic.supports(q, cache, C(block_kv=64, stages=4, streams=2))
  assert not decode_mosaic.supports(q, cache, C(block_kv=128, stages=2, streams=2))
  lower = lambda cfg: jax.export.export(jax.jit(
      lambda *a: decode_mosaic.decode_mosaic(*a, scale=0.1, config=cfg)),
      platforms=["cuda"])(q, cache, spec((8, 8), jnp.int32), spec((8,), jnp.int32))
  lower(fits)
  with pytest.raises(ValueError, match="shared memory"):
    lower(over)


@pytest.mark.parametrize("count,cap,ctas", [
    (1024, 132, 128),  # 8 rounds: 128 CTAs of 8 items, not 100 of 8 and 32 of 7
    (256, 132, 128), (133, 132, 67), (24, 5, 5), (6, 0, 6), (32, 64, 32), (2, 1, 1)])
def test_items_take_the_fewest_ctas_for_the_caps_rounds(count, cap, ctas):
  items = decode_mosaic_items.Items(count, 1, _static(cap))
  assert items.ctas == ctas
  rounds = -(-count // items.ctas)
  assert rounds == (-(-count // cap) if cap else 1)
  assert items.ctas <= count  # every CTA has an item


@pytest.mark.parametrize("count,cap,ctas", [(1024, 132, 132), (133, 132, 132),
                                            (24, 5, 5), (32, 64, 32)])
def test_dynamic_items_take_every_cta_of_the_cap(count, cap, ctas):
  items = decode_mosaic_items.Items(count, 1, _static(cap, dynamic=True))
  assert items.dynamic and items.ctas == ctas


def test_dynamic_tickets_need_a_cta_cap():
  with pytest.raises(ValueError, match="ctas"):
    C(block_kv=64, dynamic=True)
  q = jax.ShapeDtypeStruct((4, 8, 64), jnp.bfloat16)
  bf16 = jax.ShapeDtypeStruct((8, 2, 2, 16, 64), jnp.bfloat16)
  assert not decode_mosaic.supports(q, bf16, C(block_kv=64, ctas=4, dynamic=True))


def _static(cap, **kw):
  from pallas_kernels import decode_mosaic_kernel as kernel  # pylint: disable=g-import-not-at-top
  return kernel.Static(block_kv=64, stages=2, num_splits=1, q_rows=8, p_in_regs=False,
                       max_blocks=4, scale=1.0, ctas=cap, **kw)


def test_compiler_params_are_made_when_the_kernel_is_traced(monkeypatch):
  """benchmarks/decode_mosaic_inside.py turns the profiler on by replacing
  plgpu.CompilerParams after import: the kernel must pick the replacement up."""
  made = []
  real = plgpu.CompilerParams
  monkeypatch.setattr(plgpu, "CompilerParams",
                      lambda **kw: made.append(kw) or real(**kw))
  spec = jax.ShapeDtypeStruct
  cache = quantization.QuantizedKV(spec((64, 2, 2, 16, 64), jnp.int8),
                                   spec((64, 2, 2, 16), jnp.float32))
  config = C(block_kv=64)
  f = jax.jit(lambda *a: decode_mosaic.decode_mosaic(*a, scale=0.125, config=config))
  jax.export.export(f, platforms=["cuda"])(
      spec((4, 8, 64), jnp.bfloat16), cache, spec((4, 8), jnp.int32),
      spec((4,), jnp.int32))
  assert made and all(kw.get("approx_math") for kw in made)


def test_q_for_an_e4m3_cache_is_f16_clamped_to_its_range():
  """e4m3's kernels take q in f16 (wide_dtype): values past f16's range
  become its largest, not inf (bf16 rounds 65504 up to 65536)."""
  qp = jnp.asarray([[[[1e6, -1e6, 65504.0, 3.0]]]], jnp.bfloat16)
  wide = q8.wide_q(qp, jnp.uint8)
  assert wide.dtype == jnp.float16
  np.testing.assert_array_equal(np.asarray(wide, np.float32),
                                [[[[65504.0, -65504.0, 65504.0, 3.0]]]])
  assert q8.wide_q(qp, jnp.int8) is qp  # int8's kernels take bf16
