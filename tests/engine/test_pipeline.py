"""The one-step-lag pipeline keeps every running request decoding in every step.

Step N is dispatched before step N-1's tokens land. A request whose token from
step N-1 is still in flight when step N is scheduled must still be scheduled in
step N+1 (its step-N token is then pending): the engine must never idle a
request for a step while it waits for a token. (It did: landing step N-1's
token once zeroed the count of pending tokens, so every other step skipped the
request; 388 engine steps for 256 tokens.)
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from engine import LLM, SamplingParams
from models import load_model

TINY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "tiny_llama.json")
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def tiny():
  return load_model(f"random:{TINY}")


def run(llm: LLM, n: int = 4) -> list[list[int]]:
  """Steps `n` requests admitted together; returns the tokens each step delivered, per step."""
  engine = llm.engine
  rng = np.random.default_rng(0)
  for i in range(n):
    engine.add_request(str(i), prompt_token_ids=rng.integers(3, 200, 8).tolist(),
                       sampling_params=SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                      ignore_eos=True))
  steps = []
  while engine.has_unfinished_requests():
    steps.append([len(d.token_ids) for d in engine.step()])
    assert len(steps) < 100
  return steps


@pytest.mark.parametrize("k", [1, 4])
def test_every_step_delivers_tokens_for_every_running_request(tiny, k):
  llm = LLM(loaded_model=tiny, max_num_seqs=4, max_batch_tokens=64, max_model_len=64,
            num_blocks=64, num_decode_steps=k)
  steps = run(llm)
  # Step 1 prefills (its token lands in step 2); every later step lands the previous one's.
  want = [1] + [min(k, MAX_TOKENS - 1 - k * i) for i in range(-(-(MAX_TOKENS - 1) // k))]
  assert steps[0] == []
  assert steps[1:] == [[n] * 4 for n in want]
  assert len(steps) == 2 + -(-(MAX_TOKENS - 1) // k)
