"""On-device sampler: greedy, seeded reproducibility, batch independence and
statistically checked top-k / top-p / min-p distributions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.sampler import MODES, SamplingTensors, sample, sample_cheapest, sampling_mode
from engine.sampling_params import SamplingParams

_sample = jax.jit(sample)

# A fixed distribution, deliberately not sorted by vocab index.
P = np.array([0.12, 0.30, 0.02, 0.20, 0.07, 0.15, 0.04, 0.10])
LOGITS = np.log(P).astype(np.float32) + 3.7     # shifted: softmax is shift invariant


def _tensors(params, seeds=None, steps=None, pad_to=None) -> SamplingTensors:
  seeds = list(range(len(params))) if seeds is None else seeds
  steps = [0] * len(params) if steps is None else steps
  return SamplingTensors.from_params(params, seeds, steps, pad_to)


def test_from_params_pads_with_greedy_rows_and_validates():
  t = _tensors([SamplingParams(temperature=0.7, top_k=-1, top_p=0.9, min_p=0.1)],
               seeds=[2**32 + 5], steps=[3], pad_to=3)
  assert t.batch_size == 3
  np.testing.assert_array_equal(t.temperature, np.array([0.7, 0, 0], np.float32))
  np.testing.assert_array_equal(t.top_k, [0, 0, 0])
  np.testing.assert_array_equal(t.top_p, np.array([0.9, 1, 1], np.float32))
  np.testing.assert_array_equal(t.min_p, np.array([0.1, 0, 0], np.float32))
  np.testing.assert_array_equal(t.seed, [5, 0, 0])
  np.testing.assert_array_equal(t.step, [3, 0, 0])
  assert t.seed.dtype == np.uint32 and t.top_k.dtype == np.int32
  with pytest.raises(ValueError, match="pad_to"):
    _tensors([SamplingParams()] * 2, pad_to=1)
  with pytest.raises(ValueError, match="seeds"):
    SamplingTensors.from_params([SamplingParams()], [], [0])
  with pytest.raises(ValueError, match="rows"):
    sample(jnp.zeros((2, 4)), _tensors([SamplingParams()]))


def test_greedy_rows_take_argmax_with_raw_logprobs():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
  params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.9, seed=1),
            SamplingParams(temperature=0.0, top_k=3), SamplingParams(temperature=0.0)]
  tokens, logprobs = _sample(logits, _tensors(params))
  ref_lp = jax.nn.log_softmax(logits, axis=-1)
  np.testing.assert_array_equal(np.asarray(tokens)[[0, 2, 3]], logits.argmax(-1)[[0, 2, 3]])
  np.testing.assert_allclose(logprobs, np.take_along_axis(
      np.asarray(ref_lp), np.asarray(tokens)[:, None], -1)[:, 0], rtol=1e-6, atol=1e-6)
  # All-greedy batch (the fast path).
  all_greedy, _ = _sample(logits, _tensors([SamplingParams(temperature=0.0)] * 4))
  np.testing.assert_array_equal(all_greedy, logits.argmax(-1))


def test_cheapest_mode_is_exact_for_its_batch():
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(6, 300)) * 2).astype(np.float32)
  greedy = [SamplingParams(temperature=0.0, top_k=5)] * 6     # filters of greedy rows are moot
  random = [SamplingParams(temperature=0.8, seed=i) for i in range(3)] + greedy[:3]
  filtered = random[:5] + [SamplingParams(temperature=1.2, top_p=0.5, seed=9)]
  for params, mode in ((greedy, "greedy"), (random, "random"), (filtered, "filtered")):
    t = _tensors(params, seeds=list(range(6)), steps=[3] * 6)
    assert sampling_mode(t) == mode
    fast = jax.jit(sample, static_argnames="mode")(logits, t, mode)
    general = _sample(logits, t)
    np.testing.assert_array_equal(fast[0], general[0])
    np.testing.assert_allclose(fast[1], general[1], rtol=1e-6)
  # A too-cheap mode is not exact: "random" ignores the last row's top-p.
  t = _tensors(filtered * 200, seeds=list(range(1200)), steps=[0] * 1200)
  big = np.tile(logits, (200, 1))
  cheap = np.asarray(jax.jit(sample, static_argnames="mode")(big, t, "random")[0])
  exact = np.asarray(_sample(big, t)[0])
  assert not np.array_equal(cheap[5::6], exact[5::6])
  with pytest.raises(ValueError, match="mode"):
    sample(jnp.zeros((1, 4)), _tensors([SamplingParams()]), "beam")


def test_one_program_runs_the_cheapest_variant_of_every_batch():
  """`sample_cheapest` branches on the host-chosen `mode` on the device: one compiled
  program gives each batch exactly its cheapest variant's tokens and logprobs."""
  rng = np.random.default_rng(4)
  logits = (rng.normal(size=(5, 300)) * 2).astype(np.float32)
  greedy = [SamplingParams(temperature=0.0)] * 5
  random = greedy[:3] + [SamplingParams(temperature=0.8, seed=1)] * 2
  filtered = random[:4] + [SamplingParams(temperature=1.1, top_k=4, seed=2)]
  cheapest = jax.jit(sample_cheapest)
  for params, mode in ((greedy, "greedy"), (random, "random"), (filtered, "filtered")):
    t = _tensors(params, seeds=list(range(5)), steps=[2] * 5)
    assert int(t.mode) == MODES.index(mode) == MODES.index(sampling_mode(t))
    got = cheapest(logits, t)
    want = jax.jit(sample, static_argnames="mode")(logits, t, mode)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  assert cheapest._cache_size() == 1                   # one compilation for all three
  hlo = cheapest.lower(logits, t).as_text()
  assert "stablehlo.case" in hlo                       # the branches are on the device
  with pytest.raises(ValueError, match="rows"):
    sample_cheapest(jnp.zeros((2, 4)), _tensors([SamplingParams()]))


def test_seeded_reproducible_and_batch_independent():
  rng = np.random.default_rng(1)
  vocab = 300
  target = rng.normal(size=vocab).astype(np.float32) * 2
  mine = SamplingParams(temperature=0.8, top_p=0.9)
  others = [SamplingParams(temperature=1.3, top_k=5), SamplingParams(temperature=0.0),
            SamplingParams(temperature=0.5, min_p=0.2), SamplingParams(temperature=1.0)]
  outs = []
  for step in range(12):
    alone_tok, alone_lp = _sample(target[None], _tensors([mine], [1234], [step]))
    again_tok, _ = _sample(target[None], _tensors([mine], [1234], [step]))
    assert int(alone_tok[0]) == int(again_tok[0])
    # Same row at a different position, among other rows, in a padded batch.
    batch = rng.normal(size=(8, vocab)).astype(np.float32)
    pos = step % 5
    batch[pos] = target
    params = others[:pos] + [mine] + others[pos:]
    seeds = [7, 8, 9, 10, 11][:pos] + [1234] + [7, 8, 9, 10, 11][pos:len(others)]
    tok, lp = _sample(batch, _tensors(params, seeds, [step] * 5, pad_to=8))
    assert int(tok[pos]) == int(alone_tok[0])
    np.testing.assert_allclose(float(lp[pos]), float(alone_lp[0]), rtol=1e-6)
    outs.append(int(alone_tok[0]))
  assert len(set(outs)) > 3                       # steps draw different tokens
  other_seed = [int(_sample(target[None], _tensors([mine], [99], [s]))[0][0]) for s in range(12)]
  assert other_seed != outs


# (params, tokens allowed, per-token target probability over the vocab)
def _renorm(support: list[int], temperature: float = 1.0) -> np.ndarray:
  q = np.zeros_like(P)
  q[support] = P[support] ** (1.0 / temperature)
  return q / q.sum()

# Ranks by probability: 1 (.30), 3 (.20), 5 (.15), 0 (.12), 7 (.10), 4 (.07), 6 (.04), 2 (.02).
CASES = [
    (SamplingParams(temperature=1.0), _renorm(list(range(8)))),
    (SamplingParams(temperature=2.0), _renorm(list(range(8)), 2.0)),
    (SamplingParams(temperature=1.0, top_k=3), _renorm([1, 3, 5])),
    (SamplingParams(temperature=1.0, top_p=0.7), _renorm([1, 3, 5, 0])),  # .3 .5 .65 < .7
    (SamplingParams(temperature=1.0, min_p=0.3), _renorm([1, 3, 5, 0, 7])),  # p >= .09
    # top-p acts on the top-k renormalised mass: .46 + .31 >= .75 keeps 2 tokens.
    (SamplingParams(temperature=1.0, top_k=3, top_p=0.75), _renorm([1, 3])),
    # Scaled by T=0.5 (p^2): min-p .2 keeps p^2 >= .018, i.e. 1, 3, 5.
    (SamplingParams(temperature=0.5, top_k=5, min_p=0.2), _renorm([1, 3, 5], 0.5)),
]


def test_filtered_distributions_match_targets():
  n = 12000
  params = [p for p, _ in CASES for _ in range(n)]
  t = _tensors(params, seeds=list(range(len(params))), steps=[s % 7 for s in range(len(params))])
  logits = np.broadcast_to(LOGITS, (len(params), LOGITS.size))
  tokens, logprobs = _sample(logits, t)
  tokens = np.asarray(tokens).reshape(len(CASES), n)
  np.testing.assert_allclose(np.asarray(logprobs), np.log(P)[np.asarray(tokens).ravel()],
                             atol=1e-5)
  for (params_i, target), row in zip(CASES, tokens):
    freq = np.bincount(row, minlength=P.size) / n
    assert np.all(freq[target == 0] == 0), (params_i, freq)        # filtered never drawn
    bound = 5 * np.sqrt(target * (1 - target) / n) + 1e-9          # 5 sigma per token
    assert np.all(np.abs(freq - target) <= bound), (params_i, freq, target)


def _reference_keep(scaled: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
  """Sort-based numpy reference for one row: top-k, then top-p, then min-p."""
  order = np.argsort(-scaled, kind="stable")
  probs = np.exp(scaled[order] - scaled[order[0]])
  probs /= probs.sum()
  keep = np.ones(scaled.size, bool)
  if top_k > 0:
    keep[top_k:] = False
  q = np.where(keep, probs, 0.0) / probs[keep].sum()
  if top_p < 1.0:
    keep &= (np.cumsum(q) - q) < top_p
  keep &= probs >= min_p * probs[0]
  out = np.zeros(scaled.size, bool)
  out[order] = keep
  return out


def test_sort_free_filters_match_sorted_reference():
  from engine.sampler import _keep_mask
  rng = np.random.default_rng(3)
  rows, vocab = 48, 2000
  scaled = (rng.normal(size=(rows, vocab)) * rng.uniform(0.3, 4, size=(rows, 1))).astype(np.float32)
  params = [SamplingParams(top_k=int(rng.choice([0, 1, 7, 300, 5000])),
                           top_p=float(rng.choice([1.0, 0.95, 0.5, 0.05])),
                           min_p=float(rng.choice([0.0, 0.01, 0.3])))
            for _ in range(rows)]
  keep = np.asarray(jax.jit(_keep_mask)(scaled, _tensors(params)))
  for i, p in enumerate(params):
    ref = _reference_keep(scaled[i].astype(np.float64), p.top_k, p.top_p, p.min_p)
    np.testing.assert_array_equal(keep[i], ref, err_msg=str(p))
  kept = keep.sum(-1)
  assert kept.min() >= 1                 # every row keeps at least its top token
  assert kept.max() > 1000               # and loose filters keep most of the vocabulary
