"""Shape buckets: every jitted step is compiled for a fixed set of shapes.

NOTE: a step's padded shapes always come from these sets, so steady-state
serving never compiles; `--warmup` compiles all of them at start-up.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools


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
class Buckets:
  decode_rows: tuple[int, ...]       # decode batch sizes
  prefill_tokens: tuple[int, ...]    # packed token counts of a prefill step
  max_prefill_seqs: int              # sequences in one prefill step, at most
  table_widths: tuple[int, ...]      # block-table widths (blocks per sequence)

  @classmethod
  def create(cls, *, max_num_seqs: int, max_batch_tokens: int, max_model_len: int,
             block_size: int, min_prefill_tokens: int = 16,
             min_context: int = 256) -> Buckets:
    max_width = -(-max_model_len // block_size)
    min_width = min(max_width, max(1, min_context // block_size))
    return cls(
        decode_rows=powers_of_two(1, max_num_seqs),
        prefill_tokens=powers_of_two(min(min_prefill_tokens, max_batch_tokens), max_batch_tokens),
        max_prefill_seqs=min(max_num_seqs, max_batch_tokens),
        table_widths=powers_of_two(min_width, max_width),
    )

  def decode_shapes(self):
    return list(itertools.product(self.decode_rows, self.table_widths))

  def prefill_seqs(self, num_tokens: int) -> int:
    """The sequence-axis size of a prefill step of `num_tokens` (a bucket) tokens.

    NOTE: one size per token bucket, not a bucket axis of its own: padded
    sequences are empty (no query tile does work, no KV is read) and cost only
    lm-head rows, while each extra bucket is one more compilation of the whole
    model (about 4 s for Llama-3-8B on an H100).
    """
    return min(num_tokens, self.max_prefill_seqs)

  def prefill_shapes(self):
    return [(t, self.prefill_seqs(t), w)
            for t, w in itertools.product(self.prefill_tokens, self.table_widths)]
