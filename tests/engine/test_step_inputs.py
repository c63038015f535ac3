"""Host-side step inputs: verify rows packed like a prefill, and all-padding inputs whose
arrays callers may fill in place."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from engine import step_inputs
from engine.buckets import Buckets
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledRequest

BUCKETS = Buckets.create(max_num_seqs=4, max_batch_tokens=64, max_model_len=64, block_size=4,
                         width_buckets=False)


def test_verify_rows_pack_the_last_token_and_drafts_with_logits_everywhere():
  a = Request("a", [1, 2, 3, 4, 5], SamplingParams(), seed=7)
  a.output_token_ids = [6]
  a.num_computed_tokens = 5
  b = Request("b", [9, 9], SamplingParams(temperature=0.5), seed=8)
  b.num_computed_tokens = 1
  rows = [ScheduledRequest(a, 5, 4, [3, 1, 6], samples=True, is_decode=True,
                           draft_token_ids=(70, 71, 72)),
          ScheduledRequest(b, 1, 1, [2], samples=True, is_decode=True)]
  x = step_inputs.build_verify(rows, BUCKETS, 4, lambda r: 9 if r is None else 5, k=3)
  assert x.tokens.shape == (8,)                      # 2 rows (bucket) x (k + 1)
  np.testing.assert_array_equal(x.tokens[:5], [6, 70, 71, 72, 9])
  np.testing.assert_array_equal(x.positions[:5], [5, 6, 7, 8, 1])
  # a: positions 5..8 over blocks [3, 1, 6] (block size 4); b: position 1 in block 2.
  np.testing.assert_array_equal(x.slots[:5], [1 * 4 + 1, 1 * 4 + 2, 1 * 4 + 3, 6 * 4 + 0,
                                              2 * 4 + 1])
  assert not x.slots[5:].any() and not x.tokens[5:].any()      # padding: the null slot
  np.testing.assert_array_equal(x.cu_q_lens, [0, 4, 5])
  np.testing.assert_array_equal(x.kv_lens, [9, 2])
  np.testing.assert_array_equal(x.logits_indices, [[0, 1, 2, 3], [4, 4, 4, 4]])
  np.testing.assert_array_equal(x.drafts, [[70, 71, 72], [0, 0, 0]])
  np.testing.assert_array_equal(x.num_drafts, [3, 0])
  np.testing.assert_array_equal(x.sample_slots, [5, 5])
  np.testing.assert_array_equal(x.sampling.step, [1, 0])
  np.testing.assert_array_equal(x.sampling.seed, [7, 8])


def test_empty_inputs_share_no_arrays():
  """The benchmarks fill these in place (a decode at a real context length): before,
  tokens, positions, slots, lengths and num_steps of `empty_decode` were one array."""
  for x in (step_inputs.empty_decode(4, 8, 9), step_inputs.empty_prefill(16, 4, 8, 9),
            step_inputs.empty_verify(4, 3, 8, 9)):
    arrays = [getattr(x, f.name) for f in dataclasses.fields(x) if f.name != "sampling"]
    for a, b in itertools.combinations(arrays, 2):
      assert not np.shares_memory(a, b), type(x).__name__
