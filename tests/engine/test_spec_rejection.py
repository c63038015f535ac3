"""Draft verification: greedy accepts the argmax prefix; sampling keeps the target
distribution (chi-square tests on fixed logits, with a wrong rule they must reject)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from engine.sampler import SamplingTensors
from engine.sampling_params import SamplingParams
from engine.spec.rejection import num_accepted, rejection_sample_reference, verify

N = 40_000          # samples per statistical test
ALPHA = 1e-3        # a correct rule fails a test this rarely; these seeds are fixed
V = 10
# Three positions' logits, unsorted by token id; position 0's top-k/top-p cut bites.
LOGITS = np.log(np.array([
    [0.05, 0.22, 0.01, 0.30, 0.08, 0.12, 0.02, 0.15, 0.03, 0.02],
    [0.10, 0.04, 0.35, 0.06, 0.20, 0.01, 0.09, 0.05, 0.07, 0.03],
    [0.02, 0.03, 0.05, 0.07, 0.11, 0.13, 0.17, 0.19, 0.10, 0.13]])).astype(np.float32)
PARAMS = SamplingParams(temperature=0.8, top_k=8, top_p=0.95)
DRAFTS = np.array([1, 2], np.int32)     # a likely and a likely-ish draft


def target(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
  """The sampler's distribution, computed independently: temperature, top-k, top-p over
  the top-k renormalised mass (a token stays if the mass strictly above it is < top_p)."""
  scaled = logits.astype(np.float64) / p.temperature
  probs = np.exp(scaled - scaled.max())
  order = np.argsort(-probs)
  keep = np.zeros(len(probs), bool)
  keep[order[:p.top_k or len(probs)]] = True
  probs = np.where(keep, probs, 0.0) / np.where(keep, probs, 0.0).sum()
  above = np.array([probs[probs > x].sum() for x in probs])
  probs = np.where(keep & (above < p.top_p), probs, 0.0)
  return probs / probs.sum()


def chi_square_pvalue(tokens: np.ndarray, p: np.ndarray) -> float:
  """Goodness of fit of `tokens` to `p`; tokens of probability 0 must never appear."""
  counts = np.bincount(tokens, minlength=len(p))
  assert counts[p == 0].sum() == 0, (counts, p)
  return stats.chisquare(counts[p > 0], p[p > 0] * counts.sum()).pvalue


def _sampling(n: int, params: SamplingParams) -> SamplingTensors:
  return SamplingTensors.from_params([params] * n, seeds=list(range(n)), steps=[0] * n)


@pytest.fixture(scope="module")
def verified():
  logits = np.broadcast_to(LOGITS, (N, 3, V))
  drafts = np.broadcast_to(DRAFTS, (N, 2))
  out = jax.jit(verify)(logits, drafts, np.full(N, 2, np.int32), _sampling(N, PARAMS))
  return tuple(np.asarray(a) for a in out)


def test_greedy_accepts_the_longest_argmax_prefix():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4, 30)).astype(np.float32)
  argmax = logits.argmax(-1).astype(np.int32)                  # [5, 4]
  drafts = argmax[:, :3].copy()
  drafts[1, 0] += 1                                            # rejects the first
  drafts[2, 2] += 1                                            # accepts two
  num_drafts = np.array([3, 3, 3, 1, 0], np.int32)             # rows 3, 4: fewer drafts
  tokens, logprobs, n = jax.jit(verify)(logits, drafts, num_drafts,
                                        _sampling(5, SamplingParams()))
  np.testing.assert_array_equal(tokens, argmax)
  np.testing.assert_array_equal(n, [4, 1, 3, 2, 1])
  lp = jax.nn.log_softmax(logits, axis=-1)
  np.testing.assert_allclose(logprobs, np.take_along_axis(np.asarray(lp), argmax[..., None],
                                                          -1)[..., 0], rtol=1e-6, atol=1e-6)


def test_num_accepted_ignores_matches_past_a_mismatch_or_the_drafts():
  targets = np.array([[1, 2, 3], [1, 9, 3], [1, 2, 3]], np.int32)
  drafts = np.array([[1, 2], [1, 2], [1, 2]], np.int32)
  np.testing.assert_array_equal(num_accepted(targets, drafts, np.array([2, 2, 1])), [2, 1, 1])


def test_the_first_token_follows_the_target_distribution(verified):
  tokens, _, n = verified
  p0 = target(LOGITS[0], PARAMS)
  assert chi_square_pvalue(tokens[:, 0], p0) > ALPHA
  # Acceptance of the first draft is P(x_0 == d_1) = p_0(d_1): a binomial test.
  accepted = int((n >= 2).sum())
  assert stats.binomtest(accepted, N, p0[DRAFTS[0]]).pvalue > ALPHA
  # Rejected rows draw from the normalised residual (p_0 without the draft).
  residual = np.where(np.arange(V) == DRAFTS[0], 0.0, p0) / (1 - p0[DRAFTS[0]])
  assert chi_square_pvalue(tokens[n == 1, 0], residual) > ALPHA


def test_later_tokens_follow_theirs_given_the_drafts_before(verified):
  tokens, _, n = verified
  assert np.all(tokens[n >= 2, 0] == DRAFTS[0]) and np.all(tokens[n == 3, 1] == DRAFTS[1])
  assert chi_square_pvalue(tokens[n >= 2, 1], target(LOGITS[1], PARAMS)) > ALPHA
  assert chi_square_pvalue(tokens[n == 3, 2], target(LOGITS[2], PARAMS)) > ALPHA   # bonus


def test_seeded_rows_give_what_non_speculative_sampling_gives(verified):
  """Position j draws with the key of output index step + j: the row's tokens are the
  ones one-token steps would sample, whatever the drafts."""
  from engine.sampler import sample
  tokens, _, _ = verified
  for j in range(3):
    t = SamplingTensors.from_params([PARAMS] * 500, seeds=list(range(500)), steps=[j] * 500)
    alone, _ = jax.jit(sample)(np.broadcast_to(LOGITS[j], (500, V)), t)
    np.testing.assert_array_equal(tokens[:500, j], alone)


def _reference_samples(p, q, drafts_of, seed=1):
  """`rejection_sample_reference` over N keys; drafts drawn from q by `drafts_of(key)`."""
  def one(key):
    draft_key, key = jax.random.split(key)
    return rejection_sample_reference(p, q, drafts_of(draft_key), key)
  keys = jax.random.split(jax.random.PRNGKey(seed), N)
  tokens, n = jax.jit(jax.vmap(one))(keys)
  return np.asarray(tokens), np.asarray(n)


@pytest.mark.parametrize("point_mass", [True, False])
def test_the_textbook_reference_keeps_the_target_distribution(point_mass):
  p = np.stack([target(x, PARAMS) for x in LOGITS]).astype(np.float32)
  if point_mass:
    q = np.eye(V, dtype=np.float32)[DRAFTS]
    drafts_of = lambda key: jnp.asarray(DRAFTS)
  else:
    q = np.random.default_rng(3).dirichlet(np.ones(V), size=2).astype(np.float32)
    drafts_of = lambda key: jax.random.categorical(key, jnp.log(q), axis=1).astype(jnp.int32)
  tokens, n = _reference_samples(p, q, drafts_of)
  assert chi_square_pvalue(tokens[:, 0], p[0]) > ALPHA
  assert chi_square_pvalue(tokens[n >= 2, 1], p[1]) > ALPHA
  if point_mass:        # the same acceptance rate as the device rule: p_0(d_1)
    assert stats.binomtest(int((n >= 2).sum()), N, p[0, DRAFTS[0]]).pvalue > ALPHA


def test_the_tests_reject_a_wrong_rule():
  """Power: the classic mistake, resampling from p (not the residual) after a rejection,
  over-weights the draft (P(d) = p(d) (2 - p(d))), and the chi-square test sees it."""
  p0 = target(LOGITS[0], PARAMS)
  d = int(DRAFTS[0])

  def wrong(key):
    u_key, x_key = jax.random.split(key)
    resampled = jax.random.categorical(x_key, jnp.log(jnp.asarray(p0, jnp.float32)))
    return jnp.where(jax.random.uniform(u_key) < p0[d], d, resampled)
  keys = jax.random.split(jax.random.PRNGKey(1), N)
  first = np.asarray(jax.jit(jax.vmap(wrong))(keys))
  assert chi_square_pvalue(first, p0) < 1e-6
