"""The paged KV cache's layout arithmetic, host-only (no JAX).

One array for all layers, `[num_layers * num_blocks, kv_heads, 2 (K, V), block_size,
head_dim]`: layer l's block b is row l * num_blocks + b. Block 0 of every layer is the
null block. An 8-bit KV-cache dtype (int8, float8_e4m3) adds a float32 scale per token
slot, KV head and K/V beside it, `[num_layers * num_blocks, kv_heads, 2, block_size]`
(pallas_kernels/quantization.py), allocated, addressed and freed with the blocks. The
scheduler, the KV managers, the simulator and the cost model size and address blocks
through these functions; the runner allocates the arrays with `cache_shape`.
"""
from __future__ import annotations

# NOTE: block 0 is the null block: padded rows and tokens write there; it is never
# allocated, freed or hashed (engine/block_pool.py owns it).
NULL_BLOCK_ID = 0
BLOCK_SIZES = tuple(2 ** i for i in range(3, 9))   # 8 ... 256 tokens
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3": 1, "int8": 1}
QUANTIZED = ("float8_e4m3", "int8")     # stored with one SCALE_BYTES scale per vector
SCALE_BYTES = 4                         # float32
# `--kv-cache-dtype`: "auto" is the compute dtype (float32 or bfloat16).
KV_CACHE_DTYPES = ("auto", "bfloat16", "float8_e4m3", "int8")


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def itemsize(dtype: str) -> int:
  """Bytes of one element of a KV-cache dtype name."""
  if dtype not in ITEMSIZE:
    raise ValueError(f"unknown KV-cache dtype {dtype!r}; expected one of {sorted(ITEMSIZE)}")
  return ITEMSIZE[dtype]


def is_quantized(dtype: str) -> bool:
  return dtype in QUANTIZED


def bytes_per_token(model_config, dtype: str) -> int:
  """KV bytes of one token across all layers: K and V of every KV head, and their
  scales for an 8-bit dtype."""
  vector = model_config.head_dim * itemsize(dtype) + (SCALE_BYTES if is_quantized(dtype) else 0)
  return model_config.num_layers * model_config.num_kv_heads * 2 * vector


def bytes_per_block(model_config, block_size: int, dtype: str) -> int:
  """Bytes of one block across all layers (K and V of every KV head, and scales)."""
  return block_size * bytes_per_token(model_config, dtype)


def cache_shape(model_config, num_blocks: int, block_size: int) -> tuple[int, ...]:
  """The cache values' shape (see the module docstring; an 8-bit cache's scales are this
  without the last axis)."""
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
