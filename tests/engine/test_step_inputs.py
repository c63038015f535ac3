"""Host-side step inputs: all-padding inputs whose arrays callers may fill in place."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from engine import step_inputs


def test_empty_inputs_share_no_arrays():
  """The benchmarks fill these in place (a decode at a real context length): before,
  tokens, positions, slots, lengths and num_steps of `empty_decode` were one array, so every
  benchmark row ran at length 1."""
  for x in (step_inputs.empty_decode(4, 8, 9), step_inputs.empty_prefill(16, 4, 8, 9)):
    arrays = [getattr(x, f.name) for f in dataclasses.fields(x) if f.name != "sampling"]
    for a, b in itertools.combinations(arrays, 2):
      assert not np.shares_memory(a, b), type(x).__name__
