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
  prefill_seqs: tuple[int, ...]      # sequences in one prefill step
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
        prefill_seqs=powers_of_two(1, min(max_num_seqs, max_batch_tokens)),
        table_widths=powers_of_two(min_width, max_width),
    )

  def decode_shapes(self):
    return list(itertools.product(self.decode_rows, self.table_widths))

  def prefill_shapes(self):
    return [(t, s, w) for t, s, w in itertools.product(
        self.prefill_tokens, self.prefill_seqs, self.table_widths) if s <= t]
