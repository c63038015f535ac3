"""The paged KV cache's layout arithmetic, host-only (no JAX).

One array for all layers, `[num_layers * num_blocks, kv_heads, 2 (K, V), block_size,
head_dim]`: layer l's block b is row l * num_blocks + b. Block 0 of every layer is the
null block. The scheduler, the KV managers, the simulator and the cost model size and
address blocks through these functions; the runner allocates the array with
`cache_shape`.
"""
from __future__ import annotations

# NOTE: block 0 is the null block: padded rows and tokens write there; it is never
# allocated, freed or hashed (engine/block_pool.py owns it).
NULL_BLOCK_ID = 0
BLOCK_SIZES = tuple(2 ** i for i in range(3, 9))   # 8 ... 256 tokens
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def itemsize(dtype: str) -> int:
  """Bytes of one element of a KV-cache dtype name."""
  if dtype not in ITEMSIZE:
    raise ValueError(f"unknown KV-cache dtype {dtype!r}; expected one of {sorted(ITEMSIZE)}")
  return ITEMSIZE[dtype]


def bytes_per_block(model_config, block_size: int, dtype: str) -> int:
  """Bytes of one block across all layers (K and V of every KV head)."""
  per_layer = model_config.num_kv_heads * 2 * block_size * model_config.head_dim
  return per_layer * model_config.num_layers * itemsize(dtype)


def cache_shape(model_config, num_blocks: int, block_size: int) -> tuple[int, ...]:
  """The one cache array's shape (see the module docstring)."""
  rows = model_config.num_layers * num_blocks
  # NOTE: a step addresses the cache by int32 slot (row * block_size + offset).
  if rows * block_size >= 2**31:
    raise ValueError(f"KV cache of {model_config.num_layers} layers x {num_blocks} "
                     f"blocks x {block_size} tokens exceeds 2**31 int32 slots; "
                     "use fewer blocks")
  return (rows, model_config.num_kv_heads, 2, block_size, model_config.head_dim)


def slot(block_table, position, block_size: int):
  """The cache slot (layer 0) of a sequence's token at `position` (an int, or a numpy
  array of positions with `block_table` a numpy array)."""
  return block_table[position // block_size] * block_size + position % block_size
