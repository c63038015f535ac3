"""Static tiling choices for the GPU kernels, derived from shapes alone."""

from __future__ import annotations

# NOTE: H100/H200 have 132 SMs; two programs per SM hide most load latency.
TARGET_PROGRAMS = 264
DECODE_TOKENS_PER_STEP = 64
MAX_SPLITS = 16


def decode_pages_per_step(block_size: int) -> int:
  """Blocks loaded per inner-loop step: about 64 tokens, at least 1 block.

  Measured on H100 (bf16, 16-token blocks, 64 x 4096): 64 tokens/step 373 µs,
  128 tokens 392 µs, 256 tokens 444 µs.
  """
  return max(1, DECODE_TOKENS_PER_STEP // block_size)


def decode_num_splits(batch: int, num_kv_heads: int, max_blocks: int,
                      block_size: int) -> int:
  """Split-K factor: enough programs to fill the GPU, >= one step per split.

  A power of two (measured on H100, 8 x 8192: 8 splits 103 µs, 5 splits
  153 µs, 4 splits 110 µs).
  """
  programs = batch * num_kv_heads
  steps = -(-max_blocks // decode_pages_per_step(block_size))
  splits = 1
  limit = min(steps, MAX_SPLITS)
  while splits * programs < TARGET_PROGRAMS and splits * 2 <= limit:
    splits *= 2
  return splits


PREFILL_ROWS = 128
PREFILL_TOKENS_PER_STEP = 128


def prefill_block_q(group_pad: int, itemsize: int) -> int:
  """Tokens per query tile: ~128 rows (64 for float32) with heads folded in."""
  rows = PREFILL_ROWS if itemsize <= 2 else PREFILL_ROWS // 2
  return max(1, rows // group_pad)


def prefill_pages_per_step(block_size: int, itemsize: int) -> int:
  """Blocks per inner-loop step: ~128 tokens (32 for float32), >= 1 block.

  Measured on H100 (bf16, 4096-token chunk, 32 rows x 4 heads per tile):
  128 tokens/step 697-713 µs, 64 tokens/step 745-778 µs.
  """
  # NOTE: float32 keeps the 64-row x 32-token tile verified on H100 (a
  # 128 x 64 float32 tile asked for 353 KiB of shared memory).
  tokens = PREFILL_TOKENS_PER_STEP
  if itemsize > 2:
    tokens //= 4
  return max(1, tokens // block_size)


def num_stages(tokens_per_step: int, head_dim: int, itemsize: int) -> int:
  """Software-pipelining depth: 3 for K tiles <= 16 KiB, 2 <= 32 KiB, else 1.

  Each stage buffers a K and a V tile in shared memory (228 KiB per SM on
  Hopper, shared with the dot operands' layout conversions).
  """
  return 3 if tokens_per_step * head_dim * itemsize <= 16 * 1024 else (
      2 if tokens_per_step * head_dim * itemsize <= 32 * 1024 else 1)
