"""SamplingParams validation: every bad value is a ValueError naming the field."""
import pytest

from engine.sampling_params import SamplingParams


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"), ({"min_p": 1.5}, "min_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [""]}, "stop"), ({"seed": -1}, "seed"), ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ({"stop_token_ids": ["x"]}, "stop_token_ids"),
])
def test_rejects_bad_values(kwargs, field):
  with pytest.raises(ValueError, match=field):
    SamplingParams(**kwargs)


def test_lists_become_tuples_and_defaults_are_valid():
  p = SamplingParams(stop=["a", "b"], stop_token_ids=[1], temperature=0)
  assert p.stop == ("a", "b") and p.stop_token_ids == (1,) and p.greedy
  assert hash(p) == hash(SamplingParams(stop=("a", "b"), stop_token_ids=(1,), temperature=0))
