"""The Mosaic GPU prefill kernel's tile variants, pipeline and dispatch.

The oracle sweep over block sizes, groups and lengths runs both backends in
test_prefill_kernel.py; this file covers what is specific to the Mosaic
kernel. On CPU it runs in Mosaic GPU interpret mode (a simulator of the
warpgroups, barriers and TMA copies), compiled on a GPU machine.
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
from tests.kernels import helpers

BF16 = ml_dtypes.bfloat16
# 3 sequences: a prefix with a chunk (several K/V steps, stages reused), one
# without, an empty one; chunks start and end mid-block (and the third off
# an 8-row boundary of the packed q); group 4.
Q_LENS, KV_LENS = [37, 0, 12], [330, 0, 12]
BLOCK_SIZE, HQ, HKV, D = 16, 8, 2, 64


def _problem(seed=0, pad=5):
  """49 tokens + `pad`: 54 rows is no multiple of 8, so the kernel reads
  gathered tile slots; 56 (pad 7) lets it read q directly (prefill_mosaic
  .kernel_inputs)."""
  rng = np.random.default_rng(seed)
  paged = helpers.make_paged(rng, KV_LENS, HKV, D, BLOCK_SIZE, BF16)
  return helpers.prefill_problem(rng, paged, Q_LENS, KV_LENS, HQ, pad)


def _check(out, want):
  out = np.asarray(out, np.float64)
  assert helpers.rel_err(out, want) < helpers.tolerance(BF16)
  assert not out[sum(Q_LENS):].any(), "padded tokens must be zeros"


@pytest.mark.parametrize("config", [
    prefill_mosaic.MosaicConfig(),
    prefill_mosaic.MosaicConfig(compute_wgs=1),
    prefill_mosaic.MosaicConfig(block_kv=64, stages=3),
    prefill_mosaic.MosaicConfig(pingpong=False, stages=4),
    prefill_mosaic.MosaicConfig(p_in_regs=False),
], ids=str)
def test_tile_variants_match_oracle(config):
  args, want = _problem()
  _check(prefill_mosaic.prefill_mosaic(
      *args, scale=D ** -0.5, config=config, interpret=helpers.INTERPRET), want)


@pytest.mark.parametrize("pad", [5, 7], ids=["gathered-q", "direct-q"])
@pytest.mark.parametrize("config", [
    prefill_mosaic.MosaicConfig(),
    prefill_mosaic.MosaicConfig(compute_wgs=1),
], ids=str)
def test_q_read_in_place_or_gathered(config, pad):
  args, want = _problem(seed=3, pad=pad)
  _check(prefill_mosaic.prefill_mosaic(
      *args, scale=D ** -0.5, config=config, interpret=helpers.INTERPRET), want)


@pytest.mark.parametrize("tokens", [300, 304], ids=["gathered-q", "direct-q"])
@pytest.mark.parametrize("shape,config", [
    ((16, 32, 8, 128), prefill_mosaic.MosaicConfig()),  # the 8B's heads
    ((16, 32, 8, 128), prefill_mosaic.MosaicConfig(block_kv=64, stages=3)),
    ((16, 32, 8, 128), prefill_mosaic.MosaicConfig(compute_wgs=1)),
    ((16, 32, 8, 128), prefill_mosaic.MosaicConfig(pingpong=False)),
    ((8, 4, 4, 64), prefill_mosaic.MosaicConfig()),
    ((256, 9, 3, 64), prefill_mosaic.MosaicConfig()),
    ((16, 8, 1, 256), heuristics.prefill_mosaic_config(256)),
], ids=str)
def test_lowers_for_hopper(shape, config, tokens):
  """Pallas -> Mosaic GPU lowering for sm_90, P V from registers included
  (the path interpret mode cannot run). jax.export lowers for CUDA on a CPU
  machine (Mosaic assumes compute capability 9.0 without a GPU); it checks
  layouts, TMA shapes and the shared-memory budget, not ptxas."""
  block_size, hq, hkv, d = shape
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  f = jax.jit(lambda *a: prefill_mosaic.prefill_mosaic(
      *a, scale=d ** -0.5, config=config))
  exported = jax.export.export(f, platforms=["cuda"])(
      spec(tokens, hq, d), spec(64, hkv, 2, block_size, d),
      spec(3, 32, dt=jnp.int32), spec(4, dt=jnp.int32), spec(3, dt=jnp.int32))
  assert "mosaic_gpu" in exported.mlir_module()


def test_shared_memory_overflow_is_a_lowering_error():
  spec = lambda *s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
  config = prefill_mosaic.MosaicConfig(block_kv=128, stages=3)
  assert config.smem_bytes(256, 2) > prefill_mosaic.SMEM_BYTES
  f = jax.jit(lambda *a: prefill_mosaic.prefill_mosaic(
      *a, scale=0.1, config=config))
  with pytest.raises(ValueError, match="shared memory"):
    jax.export.export(f, platforms=["cuda"])(
        spec(64, 8, 256), spec(16, 1, 2, 16, 256), spec(1, 8, dt=jnp.int32),
        spec(2, dt=jnp.int32), spec(1, dt=jnp.int32))


@pytest.mark.skipif(not helpers.INTERPRET,
                    reason="the race detector is part of the CPU interpreter")
def test_pipeline_has_no_data_races():
  """The simulator's happens-before detector sees every SMEM/TMA access."""
  from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call  # pylint: disable=g-import-not-at-top
  args, want = _problem(seed=1)
  out = prefill_mosaic.prefill_mosaic(
      *args, scale=D ** -0.5,
      config=prefill_mosaic.MosaicConfig(block_kv=64, stages=2),
      interpret=plgpu.InterpretGPUParams(detect_races=True))
  _check(out, want)
  assert not interpret_pallas_call.get_races().races_found


def test_supports_16_bit_caches_with_head_dim_multiple_of_64():
  q = lambda hq, d, dt=jnp.bfloat16: jnp.zeros((4, hq, d), dt)
  cache = lambda d, dt=jnp.bfloat16: jnp.zeros((3, 2, 2, 16, d), dt)
  ok = lambda q, c: prefill_mosaic.supports(
      q, c, heuristics.prefill_mosaic_config(c.shape[-1]))
  assert ok(q(8, 128), cache(128))
  assert ok(q(8, 256), cache(256))
  assert not ok(q(8, 128, jnp.float32), cache(128, jnp.float32))
  assert not ok(q(8, 96), cache(96))
  assert not ok(q(8, 512), cache(512))  # shared memory
  assert not ok(q(512, 64), cache(64))  # group 256
  quantized = pk.QuantizedKV(jnp.zeros((3, 2, 2, 16, 128), jnp.int8),
                             jnp.zeros((3, 2, 2, 16), jnp.float32))
  assert not prefill_mosaic.supports(q(8, 128), quantized,
                                    heuristics.prefill_mosaic_config(128))


def test_default_config_fits_shared_memory():
  for d in (64, 128, 256):
    cfg = heuristics.prefill_mosaic_config(d)
    assert cfg.smem_bytes(d, 2) <= prefill_mosaic.SMEM_BYTES, (d, cfg)


def test_config_rejects_bad_tiles():
  with pytest.raises(ValueError, match="block_kv"):
    prefill_mosaic.MosaicConfig(block_kv=192)
  with pytest.raises(ValueError, match="stages"):
    prefill_mosaic.MosaicConfig(stages=1)
  with pytest.raises(ValueError, match="compute_wgs"):
    prefill_mosaic.MosaicConfig(compute_wgs=3)


def test_interpret_mode_refuses_a_cpu_pool_that_would_deadlock(monkeypatch):
  monkeypatch.setenv("PJRT_NPROC", "2")
  with pytest.raises(RuntimeError, match="PJRT_NPROC"):
    prefill_mosaic.interpret_params(True, num_warpgroups=3)
  assert prefill_mosaic.interpret_params(False, num_warpgroups=3) is None


def test_backend_mosaic_dispatches_to_the_mosaic_kernel(monkeypatch):
  """bf16 goes to prefill_mosaic; float32 falls back to the Triton kernel."""
  calls = []
  real = prefill_mosaic.prefill_mosaic
  monkeypatch.setattr(prefill_mosaic, "prefill_mosaic",
                      lambda *a, **k: calls.append(k["config"]) or real(*a, **k))
  args, want = _problem(seed=2)
  _check(pk.paged_prefill_attention(*args, backend="mosaic",
                                    interpret=helpers.INTERPRET), want)
  assert calls == [heuristics.prefill_mosaic_config(D)]
  f32 = [a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in args]
  out = pk.paged_prefill_attention(*f32, backend="mosaic",
                                   interpret=helpers.INTERPRET)
  assert len(calls) == 1  # Triton ran it
  assert helpers.rel_err(out, want) < helpers.tolerance(BF16)
