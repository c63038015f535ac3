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
