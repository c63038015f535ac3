"""Static tiling choices for the GPU kernels, derived from shapes alone."""

from __future__ import annotations

from pallas_kernels.decode_mosaic import DecodeMosaicConfig
from pallas_kernels.prefill_mosaic import MosaicConfig

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


def decode_pages_per_split(row_pages, num_splits: int, pages_per_step: int):
  """Pages of one row that one split walks: the row's own pages cut into
  `num_splits` runs of whole inner-loop steps (Python ints or traced int32).

  NOTE: from the row's length, not the table's width: the engine passes one
  table as wide as the model's context (engine/buckets.py), and a short row
  spreads over as many splits as its pages allow, as it did with a table of
  its own width.
  """
  per_split = (row_pages + num_splits - 1) // num_splits
  return (per_split + pages_per_step - 1) // pages_per_step * pages_per_step


# NOTE: measured on an H200 (2026-12-02, benchmarks/decode_mosaic_probe.py):
# one split per (row, KV head) was fastest from 256 CTAs up (64 x 2048, 32 x
# 4096), two at 64 (8 x 8192: 68.9 µs vs 106.4 µs with one); block_kv 128
# with two stages was best or within 2 %.
MOSAIC_DECODE_CTAS = 128


def decode_mosaic_config(batch: int, num_kv_heads: int, max_blocks: int,
                         block_size: int):
  """The Mosaic decode kernel's tiling from shapes alone: 128 cache tokens
  per step, two stages, splits doubling while under 128 CTAs (and each split
  has a step of the table's width)."""
  block_kv = 128
  steps = -(-max_blocks * block_size // block_kv)
  splits = 1
  while (batch * num_kv_heads * splits < MOSAIC_DECODE_CTAS
         and splits * 2 <= min(steps, MAX_SPLITS)):
    splits *= 2
  return DecodeMosaicConfig(block_kv=block_kv, stages=2, num_splits=splits)


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


def prefill_mosaic_config(head_dim: int) -> MosaicConfig:
  """Mosaic prefill tiling: 2 x 64 query rows, 128-token K/V steps, 2 stages.

  The tiling of JAX's attention_mgpu benchmark (block_q 64 per warpgroup,
  block_kv 128, 2 concurrent steps); head_dim 256 halves the K/V step to fit
  shared memory. Not yet measured on our paged kernel (benchmarks/
  mosaic_probe.py sweeps the alternatives).
  """
  return MosaicConfig(block_kv=128 if head_dim <= 128 else 64, stages=2,
                      compute_wgs=2, pingpong=True, p_in_regs=True)
