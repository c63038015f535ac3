"""The KV layout arithmetic (engine/kv_layout.py): host-only, and what the runner allocates."""
from __future__ import annotations

import numpy as np
import pytest

from engine import kv_layout
from models.config import ModelConfig
from tests.experiments.helpers import TINY_CONFIG


@pytest.fixture(scope="module")
def tiny():
  return ModelConfig.from_json(TINY_CONFIG)


def test_bytes_per_block_counts_every_layer_k_and_v(tiny):
  per_layer = tiny.num_kv_heads * 2 * 16 * tiny.head_dim
  assert kv_layout.bytes_per_block(tiny, 16, "bfloat16") == per_layer * tiny.num_layers * 2
  assert kv_layout.bytes_per_block(tiny, 16, "float32") == per_layer * tiny.num_layers * 4
  with pytest.raises(ValueError, match="KV-cache dtype"):
    kv_layout.bytes_per_block(tiny, 16, "int4")


@pytest.mark.parametrize("dtype", ["int8", "float8_e4m3"])
def test_an_8bit_block_counts_one_byte_values_and_a_float32_scale_per_vector(tiny, dtype):
  vectors = tiny.num_layers * tiny.num_kv_heads * 2 * 16
  assert kv_layout.bytes_per_block(tiny, 16, dtype) == vectors * (tiny.head_dim + 4)
  assert kv_layout.bytes_per_token(tiny, dtype) * 16 == kv_layout.bytes_per_block(tiny, 16, dtype)
  assert kv_layout.is_quantized(dtype) and not kv_layout.is_quantized("bfloat16")


def test_llama3_8b_holds_1_9x_the_2000_token_requests_in_8_bits():
  from models.weights.random_init import config_path
  config = ModelConfig.from_json(config_path("llama3-8b"))
  budget = 100 << 30
  fits = {d: (budget // kv_layout.bytes_per_block(config, 16, d)) // kv_layout.cdiv(2000, 16)
          for d in ("bfloat16", "int8", "float8_e4m3")}
  assert kv_layout.bytes_per_block(config, 16, "bfloat16") == 2 << 20         # 2 MiB
  assert kv_layout.bytes_per_block(config, 16, "int8") == 32 * 8 * 2 * 16 * 132
  assert fits["int8"] == fits["float8_e4m3"] and 1.93 < fits["int8"] / fits["bfloat16"] < 1.95


def test_cache_shape_is_one_array_for_all_layers(tiny):
  shape = kv_layout.cache_shape(tiny, 10, 16)
  assert shape == (tiny.num_layers * 10, tiny.num_kv_heads, 2, 16, tiny.head_dim)
  with pytest.raises(ValueError, match="int32 slots"):
    kv_layout.cache_shape(tiny, 2**31 // 16, 16)


def test_slot_of_a_position_scalar_and_array():
  table = [7, 3, 9]
  assert kv_layout.slot(table, 0, 8) == 56 and kv_layout.slot(table, 17, 8) == 73
  got = kv_layout.slot(np.array(table), np.arange(8, 11), 8)
  assert got.tolist() == [24, 25, 26]
  assert kv_layout.cdiv(17, 8) == 3 and kv_layout.NULL_BLOCK_ID == 0
  assert kv_layout.BLOCK_SIZES == (8, 16, 32, 64, 128, 256)
