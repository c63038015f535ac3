"""SamplingParams validation: every bad value is a ValueError naming the field."""
import pytest

from engine.sampling_params import SamplingParams


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [""]}, "stop"), ({"seed": -1}, "seed"), ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"stop_token_ids": ["x"]}, "stop_token_ids"),
    # Values that used to pass and misbehave: top_p underflows float32 to 0 (token id 0
    # every time), a huge or tiny temperature overflows the scaled logits, inf and nan.
    ({"top_p": 1e-300}, "top_p"), ({"top_p": 1e-7}, "top_p"), ({"top_p": float("nan")}, "top_p"),
    ({"temperature": 1e9}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": 1e-300}, "temperature"),
    ({"temperature": 0.009}, "temperature"), ({"temperature": True}, "temperature"),
    ({"min_p": float("nan")}, "min_p"), ({"min_p": float("-inf")}, "min_p"),
    ({"top_k": 2 ** 31}, "top_k"), ({"top_k": 1.5}, "top_k"), ({"max_tokens": 2.0}, "max_tokens"),
    ({"stop_token_ids": [2 ** 31]}, "stop_token_ids"),
])
def test_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    SamplingParams(**kwargs)


def test_lists_become_tuples_and_defaults_are_valid():
  p = SamplingParams(stop=["a", "b"], stop_token_ids=[1], temperature=0)
  assert p.stop == ("a", "b") and p.stop_token_ids == (1,) and p.greedy
  assert hash(p) == hash(SamplingParams(stop=("a", "b"), stop_token_ids=(1,), temperature=0))


def test_the_bounds_themselves_are_valid():
  from engine.sampling_params import MAX_TEMPERATURE, MIN_TEMPERATURE, MIN_TOP_P
  for kwargs in ({"temperature": MIN_TEMPERATURE}, {"temperature": MAX_TEMPERATURE},
                 {"temperature": 0}, {"top_p": MIN_TOP_P}, {"top_k": 2 ** 31 - 1},
                 {"min_p": 1.0}, {"stop_token_ids": [2 ** 31 - 1]}, {"max_tokens": 10 ** 9}):
    SamplingParams(**kwargs)


def test_the_bounds_sample_sanely_on_the_device():
  """At the accepted extremes the float32 sampler still works: MIN_TOP_P is top-1 (1e-300
  used to underflow to 0 and give token id 0), MIN/MAX_TEMPERATURE give finite results."""
  import jax
  import numpy as np

  from engine.sampler import SamplingTensors, sample
  from engine.sampling_params import MAX_TEMPERATURE, MIN_TEMPERATURE, MIN_TOP_P
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(6, 300)) * 30).astype(np.float32)
  logits[:, 0] = -100.0                              # token 0 is never a good answer
  params = [SamplingParams(top_p=MIN_TOP_P, seed=i) for i in range(2)] + [
      SamplingParams(temperature=MIN_TEMPERATURE, seed=i) for i in range(2)] + [
      SamplingParams(temperature=MAX_TEMPERATURE, seed=i) for i in range(2)]
  tokens, logprobs = jax.jit(sample)(logits, SamplingTensors.from_params(
      params, list(range(6)), [0] * 6))
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens[:4], logits.argmax(-1)[:4])
  assert np.all((tokens > 0) & (tokens < 300)) and np.all(np.isfinite(np.asarray(logprobs)))
