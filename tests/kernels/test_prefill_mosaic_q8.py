"""The Mosaic GPU prefill over 8-bit caches (prefill_mosaic_q8.py) against a
float64 oracle over the dequantized stored values.

On CPU it runs in Mosaic GPU interpret mode, compiled on a GPU machine.
Unowned slots hold NaN scales and NaN e4m3 bits (helpers.make_paged_quantized):
a step that let one into P V would turn its rows into NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import pallas_kernels as pk
from pallas_kernels import heuristics
from pallas_kernels import prefill_mosaic
from pallas_kernels import prefill_mosaic_q8 as q8
from pallas_kernels import quantization
from pallas_kernels import tuning
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
C = prefill_mosaic.MosaicConfig
# As test_prefill_mosaic: a prefix with a chunk (several steps, stages and the
# ring reused), none, an empty sequence; chunks start and end mid-block.
Q_LENS, KV_LENS = [37, 0, 12], [330, 0, 12]


def _problem(name, block_size=16, hq=8, hkv=2, d=64, seed=0, pad=5,
             lens=(Q_LENS, KV_LENS)):
  q_lens, kv_lens = lens
  rng = np.random.default_rng(seed)
  paged = helpers.make_paged_quantized(rng, kv_lens, hkv, d, block_size, name)
  return helpers.prefill_problem(rng, paged, q_lens, kv_lens, hq, pad)


def _check(out, want, q_lens=Q_LENS):
  out = np.asarray(out, np.float64)
  assert np.isfinite(out).all(), "a poisoned slot leaked"
  assert helpers.rel_err(out, want) < helpers.tolerance(BF16)
  assert not out[sum(q_lens):].any(), "padded tokens must be zeros"


CASES = [  # block_size, hq, hkv, d, config
    (16, 8, 2, 64, C()),  # two 8-bit stages
    (16, 8, 2, 64, C(compute_wgs=1)),
    (16, 8, 2, 64, C(block_kv=64, stages=3)),
    (64, 4, 4, 128, C(block_kv=64, p_in_regs=False, pingpong=False)),  # GQA 1
    (256, 9, 3, 64, C(block_kv=64)),  # GQA 3, a block sliced in steps
    (8, 8, 1, 128, C(block_kv=128, stages=2)),  # one 8-bit stage (ring_stages)
]


@pytest.mark.parametrize("name", helpers.QUANTIZED)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_oracle(case, name):
  block_size, hq, hkv, d, config = case
  args, want = _problem(name, block_size, hq, hkv, d, seed=block_size + hq)
  assert q8.supports(args[0], args[1], config)
  out = q8.prefill_mosaic_q8(*args, scale=d ** -0.5, config=config,
                             interpret=helpers.INTERPRET)
  assert out.dtype == jnp.bfloat16
  _check(out, want)


def test_a_table_shorter_than_the_ring():
  """Block tables of 64 tokens under two 128-token 8-bit stages: the ring's
  first fetches are indexed statically, the second never taken."""
  lens = ([20, 0, 3], [20, 0, 40])
  args, want = _problem("int8", lens=lens)
  assert args[2].shape[1] * 16 < 2 * 128
  _check(q8.prefill_mosaic_q8(*args, scale=64 ** -0.5, config=C(),
                              interpret=helpers.INTERPRET), want, lens[0])


def test_ring_has_two_stages_where_shared_memory_holds_them():
  assert q8.ring_stages(C(), 64) == 2
  assert q8.ring_stages(C(), 128) == 1  # 228.1 KiB with two, of 227
  assert q8.ring_stages(C(block_kv=64, stages=3), 128) == 2
  for d in (64, 128):
    config = heuristics.prefill_mosaic_config(d)
    assert q8.smem_bytes(config, d, q8.ring_stages(config, d)) <= prefill_mosaic.SMEM_BYTES


def test_supports_8_bit_caches_under_the_16_bit_limits():
  q = lambda hq, d, dt=jnp.bfloat16: jax.ShapeDtypeStruct((4, hq, d), dt)

  def cache(d, storage=jnp.int8, hkv=2):
    return quantization.QuantizedKV(
        jax.ShapeDtypeStruct((3, hkv, 2, 16, d), storage),
        jax.ShapeDtypeStruct((3, hkv, 2, 16), jnp.float32))

  ok = lambda q, c: q8.supports(q, c, heuristics.prefill_mosaic_config(c.values.shape[-1]))
  assert ok(q(8, 128), cache(128)) and ok(q(8, 128), cache(128, jnp.uint8))
  assert not ok(q(8, 256), cache(256))  # shared memory: Triton's
  assert not ok(q(8, 128, jnp.float32), cache(128))
  assert not ok(q(8, 96), cache(96))
  assert not ok(q(64, 64), cache(64, hkv=2))  # group 32
  assert not q8.supports(q(8, 128), jnp.zeros((3, 2, 2, 16, 128), jnp.bfloat16), C())


@pytest.mark.skipif(not helpers.INTERPRET,
                    reason="the race detector is part of the CPU interpreter")
@pytest.mark.parametrize("config", [C(block_kv=64, stages=2), C()], ids=str)
def test_pipeline_has_no_data_races(config):
  """The 8-bit ring's refill after its conversion, the 16-bit stages'
  release: the simulator's happens-before detector sees every access."""
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call  # pylint: disable=g-import-not-at-top
  args, want = _problem("float8_e4m3", seed=1)
  out = q8.prefill_mosaic_q8(*args, scale=64 ** -0.5, config=config,
                             interpret=plgpu.InterpretGPUParams(detect_races=True))
  _check(out, want)
  assert not interpret_pallas_call.get_races().races_found


@pytest.mark.parametrize("name", helpers.QUANTIZED)
@pytest.mark.parametrize("shape,config", [
    ((16, 32, 8, 128), heuristics.prefill_mosaic_config(128)),  # the 8B's heads
    ((16, 32, 8, 128), C(block_kv=64, stages=3)),
    ((256, 9, 3, 64), C()),
], ids=str)
def test_lowers_for_hopper(shape, config, name):
  """Pallas -> Mosaic GPU lowering for sm_90 (P V from registers included):
  layouts, the 8-bit TMA shapes, shared memory; not ptxas."""
  block_size, hq, hkv, d = shape
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  cache = quantization.QuantizedKV(
      spec(64, hkv, 2, block_size, d, dt=quantization.storage_dtype(name)),
      spec(64, hkv, 2, block_size, dt=jnp.float32))
  assert q8.supports(spec(300, hq, d), cache, config)
  f = jax.jit(lambda *a: q8.prefill_mosaic_q8(*a, scale=d ** -0.5, config=config))
  exported = jax.export.export(f, platforms=["cuda"])(
      spec(300, hq, d), cache, spec(3, 32, dt=jnp.int32), spec(4, dt=jnp.int32),
      spec(3, dt=jnp.int32))
  assert "paged_prefill_mosaic_q8" in exported.mlir_module()


def _table(us, triton_us, name="int8", head_dim=64):
  """A tuning table whose one prefill_mosaic_q8 entry timed these."""
  return {"prefill_mosaic_q8": [dict(shape=f"4096@{name}", kv_cache_dtype=name,
                                     head_dim=head_dim, block_size=16, us=us,
                                     triton_us=triton_us, err=2e-3)]}


@pytest.mark.parametrize("table,mosaic", [
    (_table(90.0, 100.0), True),
    (_table(110.0, 100.0), False),  # measured slower
    (_table(90.0, 100.0, name="float8_e4m3"), False),  # another dtype's
    (_table(90.0, 100.0, head_dim=128), False),  # another head_dim's
    ({}, False),  # no table, no measurement, no dispatch
], ids=["faster", "slower", "other-dtype", "other-head-dim", "no-table"])
def test_backend_mosaic_takes_it_where_the_table_timed_it_faster(monkeypatch, table,
                                                                 mosaic):
  """paged_prefill_attention sends an 8-bit cache to this kernel under
  "mosaic" only where the device's table says it beat Triton; else (and for
  a float32 q) the Triton kernel runs, with the same result."""
  calls = []
  real = q8.prefill_mosaic_q8
  monkeypatch.setattr(q8, "prefill_mosaic_q8",
                      lambda *a, **k: calls.append(k["config"]) or real(*a, **k))
  monkeypatch.setattr(tuning, "load_table", lambda kind: table)
  args, want = _problem("int8", seed=2)
  _check(pk.paged_prefill_attention(*args, backend="mosaic",
                                    interpret=helpers.INTERPRET), want)
  assert calls == ([heuristics.prefill_mosaic_config(64)] if mosaic else [])
  out = pk.paged_prefill_attention(args[0].astype(jnp.float32), *args[1:],
                                   backend="mosaic", interpret=helpers.INTERPRET)
  assert len(calls) == int(mosaic)  # Triton ran it
  assert helpers.rel_err(np.asarray(out, np.float64), want) < helpers.tolerance(BF16)


@pytest.mark.parametrize("wgs", [1, 2])
def test_registers_asked_for_fit_the_ctas_pool(wgs):
  """setmaxnreg.inc waits for free registers: the warpgroups' asks must sum
  to at most the launch's pool, or the kernel hangs (2 x 208 + 96 over 504
  hung on the H100)."""
  from pallas_kernels import prefill_mosaic_kernel as kernel  # pylint: disable=g-import-not-at-top
  assert kernel.register_pool(3) == 3 * 168 and kernel.register_pool(2) == 2 * 256
  for memory in (kernel.MEMORY_REGISTERS, q8.MEMORY_REGISTERS):
    compute = kernel.compute_registers(wgs, memory)
    assert compute % 8 == 0 and compute <= 256
    assert wgs * compute + memory <= kernel.register_pool(wgs + 1)
  assert kernel.compute_registers(2) == 232  # the 16-bit kernel's, unchanged
  assert kernel.compute_registers(2, q8.MEMORY_REGISTERS) == 208
