"""Shape buckets: every jitted step is compiled for a fixed set of shapes.

NOTE: a step's padded shapes always come from these sets, so steady-state
serving never compiles; warm-up compiles all of them (`plan`) at start-up.
"""
from __future__ import annotations

import bisect
import dataclasses


def powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
  """Powers of two from the one >= lo up to the one >= hi (hi itself if not a power)."""
  out, p = [], 1
  while p < lo:
    p *= 2
  while p < hi:
    out.append(p)
    p *= 2
  out.append(max(p, lo) if not out else p)
  return tuple(sorted(set(out)))


def pick(buckets: tuple[int, ...], n: int) -> int:
  """The smallest bucket >= n."""
  i = bisect.bisect_left(buckets, n)
  if i == len(buckets):
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")
  return buckets[i]


@dataclasses.dataclass(frozen=True)
class StepShape:
  """One compiled step: its kind, padded shapes and decode iterations."""
  kind: str               # "decode", "prefill" or "verify" (speculative decoding)
  tokens: int             # decode: rows; prefill: packed tokens; verify: rows * (k + 1)
  seqs: int               # decode, verify: rows; prefill: sequences
  width: int              # block-table width (blocks per sequence)
  decode_steps: int = 1   # iterations of a decode step (1 for prefill)


@dataclasses.dataclass(frozen=True)
class Buckets:
  decode_rows: tuple[int, ...]       # decode batch sizes
  prefill_tokens: tuple[int, ...]    # packed token counts of a prefill step
  max_prefill_seqs: int              # sequences in one prefill step, at most
  table_widths: tuple[int, ...]      # block-table widths (blocks per sequence)

  @classmethod
  def create(cls, *, max_num_seqs: int, max_batch_tokens: int, max_model_len: int,
             block_size: int, width_buckets: bool = True, min_prefill_tokens: int = 16,
             min_context: int = 256) -> Buckets:
    """`width_buckets`: block-table widths in powers of two (for an attention backend
    whose cost grows with the table's width, `pallas_kernels.reads_whole_block_table`),
    else the one widest table.

    NOTE: every width is a power of two (the widest: the one >= cdiv(max_model_len,
    block_size)); the Triton kernels take the table as a block shape.
    """
    max_width = -(-max_model_len // block_size)
    widths = powers_of_two(min(max_width, max(1, min_context // block_size)), max_width)
    return cls(
        decode_rows=powers_of_two(1, max_num_seqs),
        prefill_tokens=powers_of_two(min(min_prefill_tokens, max_batch_tokens), max_batch_tokens),
        max_prefill_seqs=min(max_num_seqs, max_batch_tokens),
        table_widths=widths if width_buckets else widths[-1:],
    )

  def prefill_seqs(self, num_tokens: int) -> int:
    """The sequence-axis size of a prefill step of `num_tokens` (a bucket) tokens.

    NOTE: one size per token bucket, not a bucket axis of its own: padded
    sequences are empty (no query tile does work, no KV is read) and cost only
    lm-head rows, while each extra bucket is one more compilation of the whole
    model (about 4 s for Llama-3-8B on an H100).
    """
    return min(num_tokens, self.max_prefill_seqs)


def plan(buckets: Buckets, num_decode_steps: int = 1,
         num_speculative_tokens: int = 0) -> tuple[StepShape, ...]:
  """Every step shape an engine with these buckets can run: what warm-up compiles.

  Decode: each row bucket x table width, once with one iteration and, if
  `num_decode_steps` > 1, once with that many. Prefill: each token bucket x
  width. Verify (speculative decoding with k = `num_speculative_tokens` > 0):
  each decode row bucket x width, k + 1 token slots per row. The sampler variant
  is data, not a shape (engine/sampler.py).
  """
  steps = sorted({1, num_decode_steps})
  decode = [StepShape("decode", rows, rows, width, k)
            for rows in buckets.decode_rows for width in buckets.table_widths for k in steps]
  prefill = [StepShape("prefill", tokens, buckets.prefill_seqs(tokens), width)
             for tokens in buckets.prefill_tokens for width in buckets.table_widths]
  verify = [StepShape("verify", rows * (num_speculative_tokens + 1), rows, width)
            for rows in buckets.decode_rows for width in buckets.table_widths
            if num_speculative_tokens]
  return tuple(decode + prefill + verify)
