"""Verification of draft tokens on the device: which drafts a row accepts, and the
token after them.

A verify row holds its last token and m <= k drafts d_1..d_m; the step's logits
give the target distribution p_j of each of the k + 1 next positions. The
engine's sampler draws x_j from p_j (temperature, top-k, top-p, min-p; greedy:
the argmax) with the key a non-speculative step uses for that output index
(`fold_in(PRNGKey(seed), step + j)`). The row accepts d_{j+1} while
x_j == d_{j+1}; its tokens are x_0..x_a: the a accepted drafts, then the first
mismatch or, with every draft accepted, the bonus token x_m.

NOTE: this IS speculative rejection sampling for a proposer whose draft
distribution q is a point mass on d (the n-gram proposer): it accepts with
probability min(1, p(d)/q(d)) = p(d) = P(x == d), and on rejection the token is
x given x != d, i.e. p without d renormalised = max(0, p - q) / (1 - p(d)),
the normalised residual. Drawing x first couples the accept test and the
residual draw to one sample, so the output is token for token what
non-speculative sampling with the same seed gives: a seeded request's output
does not depend on how many drafts the scheduler let it verify (token budget,
free blocks, the rest of the batch). Greedy rows accept the longest prefix on
which the drafts equal the argmax. `rejection_sample_reference` is the textbook
rule (a uniform per draft, a residual draw) for any q; the tests check that
both give the target distribution.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from engine.sampler import SamplingTensors, sample_cheapest


def positions_sampling(t: SamplingTensors, num_positions: int) -> SamplingTensors:
  """Each row's parameters repeated for its `num_positions` positions, row-major, with
  position j at output index step + j (its own sampling key)."""
  rep = lambda a: jnp.repeat(a, num_positions)
  offsets = jnp.tile(jnp.arange(num_positions, dtype=jnp.int32), t.temperature.shape[0])
  return SamplingTensors(rep(t.temperature), rep(t.top_k), rep(t.top_p), rep(t.min_p),
                         rep(t.seed), rep(t.step) + offsets, t.mode)


def num_accepted(targets: jax.Array, drafts: jax.Array, num_drafts: jax.Array) -> jax.Array:
  """Drafts accepted per row: the longest prefix with drafts[:, j] == targets[:, j].

  targets: i32 [R, k + 1]; drafts: i32 [R, k]; num_drafts: i32 [R] (drafts past
  it are padding and never accepted). Returns i32 [R] in 0..num_drafts.
  """
  k = drafts.shape[1]
  match = (drafts == targets[:, :k]) & (jnp.arange(k)[None, :] < num_drafts[:, None])
  return jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)


def verify(logits: jax.Array, drafts: jax.Array, num_drafts: jax.Array,
           sampling: SamplingTensors) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The verify step's acceptance.

  Args:
    logits: f32 [R, k + 1, V]: position j follows the row's j-th draft (0: its last token).
    drafts: i32 [R, k]; num_drafts: i32 [R].
    sampling: one row per verify row (`step` = tokens it generated before this step).
  Returns:
    tokens i32 [R, k + 1] (the first `num_tokens` are the row's output), their
    log-probabilities f32 [R, k + 1] under the raw distribution, num_tokens i32 [R]
    (accepted drafts + 1).
  """
  rows, positions, vocab = logits.shape
  flat = positions_sampling(sampling, positions)
  targets, logprobs = sample_cheapest(logits.reshape(rows * positions, vocab), flat)
  targets = targets.reshape(rows, positions)
  return targets, logprobs.reshape(rows, positions), num_accepted(targets, drafts,
                                                                  num_drafts) + 1


def rejection_sample_reference(p: jax.Array, q: jax.Array, drafts: jax.Array,
                               key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Textbook speculative rejection sampling of one row (Leviathan et al., Chen et al.).

  Args:
    p: f32 [k + 1, V] target probabilities; q: f32 [k, V] draft probabilities
      (a one-hot row for a point-mass proposer); drafts: i32 [k], drafts[j] ~ q[j].
  Returns:
    tokens i32 [k + 1] (-1 past the output) and their count (accepted + 1): draft j
    is accepted with probability min(1, p_j(d) / q_j(d)); the first rejected one is
    replaced by a draw from max(0, p_j - q_j) normalised; all accepted: a bonus
    token from p_k.
  """
  k = q.shape[0]
  u_key, residual_key, bonus_key = jax.random.split(key, 3)
  u = jax.random.uniform(u_key, (k,))
  p_d = jnp.take_along_axis(p[:k], drafts[:, None], axis=1)[:, 0]
  q_d = jnp.take_along_axis(q, drafts[:, None], axis=1)[:, 0]
  accept = u < jnp.minimum(1.0, p_d / q_d)
  residual = jnp.maximum(p[:k] - q, 0.0)
  residual = residual / jnp.sum(residual, axis=1, keepdims=True)
  replaced = jax.random.categorical(residual_key, jnp.log(residual), axis=1)   # [k]
  bonus = jax.random.categorical(bonus_key, jnp.log(p[k]))
  a = jnp.sum(jnp.cumprod(accept.astype(jnp.int32)))
  j = jnp.arange(k + 1)
  last = jnp.where(a < k, replaced[jnp.minimum(a, k - 1)], bonus)
  padded = jnp.concatenate([drafts, jnp.zeros((1,), drafts.dtype)])
  tokens = jnp.where(j < a, padded, jnp.where(j == a, last, -1))
  return tokens.astype(jnp.int32), a + 1
