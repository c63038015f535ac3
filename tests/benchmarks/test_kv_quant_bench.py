"""benchmarks/kv_quant.py's host-side parts on CPU (the timings need a GPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels as pk
from benchmarks import kv_quant
from pallas_kernels import quantization


def test_grid_starts_with_the_engine_tiling_and_has_no_duplicates():
  default = dict(num_splits=2, pages_per_step=8, num_warps=4, num_stages=3)
  cfgs = kv_quant.grid(default)
  assert cfgs[0] == default and len(cfgs) == len({tuple(c.items()) for c in cfgs}) == 12
  assert {c["pages_per_step"] for c in cfgs} == {4, 8, 16}
  assert {c["num_splits"] for c in cfgs} == {2}


def test_cache_of_stores_the_problem_in_each_dtype():
  kv = jax.random.normal(jax.random.key(0), (5, 2, 2, 16, 128), jnp.bfloat16)
  assert kv_quant.cache_of(kv, "bfloat16") is kv
  for name in ("int8", "float8_e4m3"):
    cache = kv_quant.cache_of(kv, name)
    assert isinstance(cache, pk.QuantizedKV) and cache.scales.shape == (5, 2, 2, 16)
    back = np.asarray(quantization.dequantize(*cache))
    err = np.linalg.norm(back - np.asarray(kv, np.float32)) / np.linalg.norm(
        np.asarray(kv, np.float32))
    assert 0 < err < (0.01 if name == "int8" else 0.05)


def test_llama8b_weights_and_the_report():
  config, weights = kv_quant.llama8b()
  assert config.num_layers == 32 and 15.9e9 < weights < 16.2e9      # 8.03 B params in bf16
  row = lambda dtype, us: dict(
      shape="64x4096", batch=64, context=4096, dtype=dtype, bytes=10**9, read_us=100.0,
      default=dict(cfg=dict(num_splits=1, pages_per_step=8, num_warps=4, num_stages=3), us=us),
      best=dict(cfg=dict(num_splits=1, pages_per_step=16, num_warps=8, num_stages=2), us=us),
      max_err=1e-3, ok=True, quant_err_vs_bf16=1e-2, default_vs_bf16=us / 200,
      best_vs_bf16=us / 200)
  decode = [row("bfloat16", 200.0), row("int8", 110.0)]
  memory = [dict(dtype="bfloat16", bytes_per_block=2 << 20, num_blocks=101, requests=10,
                 vs_bf16=1.0, allocated_gib=0.2),
            dict(dtype="int8", bytes_per_block=1081344, num_blocks=196, requests=19,
                 vs_bf16=1.9, allocated_gib="FAILED: x")]
  text = kv_quant.markdown(decode, memory)
  assert "| 64x4096 | int8 | 1000 | 100.0 | 110.0 (91%) | 0.55 |" in text
  assert "| int8 | 1081344 | 196 | 19 | 1.90 | FAILED: x |" in text
  (entry,) = kv_quant.table_entries(decode)
  assert entry["itemsize"] == 1 and entry["pages_per_step"] == 16 and entry["us"] == 110.0
