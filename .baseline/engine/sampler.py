"""On-device token sampling for a batch of rows with per-row parameters.

`sample` is a pure jittable function: greedy rows take the argmax; the others
scale by temperature, apply top-k, then top-p (over the top-k renormalised
distribution), then min-p, and draw with the key
`fold_in(PRNGKey(seed), step)`. A row's result depends only on its own logits
and parameters, never on the other rows of the batch, so a seeded request
gives the same output whatever it is batched with.

The host picks one of three static variants per step (`sampling_mode`):
"greedy" (argmax only), "random" (no filters) or "filtered" (the general one).
NOTE: no data-dependent `lax.cond` here: on a GPU a conditional copies its
predicate to the host and waits for it, stalling the step mid-way.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.sampling_params import SamplingParams

_UINT32_MOD = 1 << 32
MODES = ("greedy", "random", "filtered")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingTensors:
  """Per-row sampling parameters as arrays (a pytree, passed into the jitted step)."""
  temperature: jax.Array  # f32 [B]; 0 = greedy
  top_k: jax.Array        # i32 [B]; 0 = off
  top_p: jax.Array        # f32 [B]; 1 = off
  min_p: jax.Array        # f32 [B]; 0 = off
  seed: jax.Array         # u32 [B]
  step: jax.Array         # i32 [B]; tokens this request has generated so far

  @property
  def batch_size(self) -> int:
    return int(self.temperature.shape[0])

  @classmethod
  def from_params(cls, params: Sequence[SamplingParams], seeds: Sequence[int],
                  steps: Sequence[int], pad_to: int | None = None) -> SamplingTensors:
    """Builds numpy-backed tensors on the host; padding rows are greedy.

    `seeds` are the per-request seeds (the engine draws one when
    `SamplingParams.seed` is None); they are reduced modulo 2**32.
    """
    n = len(params)
    if len(seeds) != n or len(steps) != n:
      raise ValueError(f"got {n} params, {len(seeds)} seeds and {len(steps)} steps")
    size = n if pad_to is None else pad_to
    if size < n:
      raise ValueError(f"pad_to={pad_to} is smaller than the batch ({n})")
    if any(s < 0 for s in seeds) or any(s < 0 for s in steps):
      raise ValueError("seeds and steps must be non-negative")
    temperature = np.zeros(size, np.float32)
    top_k = np.zeros(size, np.int32)
    top_p = np.ones(size, np.float32)
    min_p = np.zeros(size, np.float32)
    seed = np.zeros(size, np.uint32)
    step = np.zeros(size, np.int32)
    for i, p in enumerate(params):
      temperature[i] = p.temperature
      top_k[i] = max(p.top_k, 0)  # -1 and 0 both mean off
      top_p[i] = p.top_p
      min_p[i] = p.min_p
      seed[i] = seeds[i] % _UINT32_MOD
      step[i] = steps[i]
    return cls(temperature, top_k, top_p, min_p, seed, step)


def sampling_mode(t: SamplingTensors) -> str:
  """The cheapest sampler variant that is exact for every row (host-side, numpy)."""
  sampled = np.asarray(t.temperature) > 0.0
  if not sampled.any():
    return "greedy"
  filtered = sampled & ((np.asarray(t.top_k) > 0) | (np.asarray(t.top_p) < 1.0)
                        | (np.asarray(t.min_p) > 0.0))
  return "filtered" if filtered.any() else "random"


def _order_key(x: jax.Array) -> jax.Array:
  """Maps f32 to i32 so that integer order equals float order (no NaNs)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))


def _bisect(pred, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row, the boundary of a monotone predicate over int32 keys.

  NOTE: invariant pred(lo) != pred(hi) per row; 32 halvings pin hi = lo + 1.
  Returns the final (lo, hi) pair.
  """
  def body(_, bounds):
    lo, hi = bounds
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)      # floor average, no overflow
    go_up = pred(mid) == pred(lo)
    return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)
  return jax.lax.fori_loop(0, 32, body, (lo, hi))


def _keep_mask(scaled: jax.Array, t: SamplingTensors) -> jax.Array:
  """Which tokens survive top-k, then top-p (on the top-k renormalised mass),
  then min-p. Sort-free: XLA's sort is slow on CPU, bisection is not.

  NOTE: each filter keeps a prefix of the descending order, so each is one
  threshold per row, found by bisection over the tokens' order keys. Tokens
  tied with a threshold are all kept.
  """
  vocab = scaled.shape[-1]
  keys = _order_key(scaled)                                        # [B, V]
  top = jnp.max(scaled, axis=-1, keepdims=True)                    # [B, 1]
  lo = jnp.min(keys, axis=-1)                                      # [B]
  hi = jnp.max(keys, axis=-1) + 1
  k = jnp.where(t.top_k > 0, jnp.minimum(t.top_k, vocab), vocab)  # [B]
  # top-k: the k-th largest key, the largest x with count(key >= x) >= k.
  count_ge = lambda x: jnp.sum(keys >= x[:, None], axis=-1) >= k
  key_k, _ = _bisect(count_ge, lo, hi)
  # top-p: the smallest x whose strictly-higher top-k mass is < top_p.
  weights = jnp.where(keys >= key_k[:, None], jnp.exp(scaled - top), 0.0)  # [B, V]
  budget = t.top_p * jnp.sum(weights, axis=-1)                     # [B]
  mass_lt = lambda x: jnp.sum(jnp.where(keys > x[:, None], weights, 0.0), axis=-1) < budget
  _, key_p = _bisect(mass_lt, lo - 1, hi)
  key_p = jnp.where(t.top_p >= 1.0, lo, key_p)
  threshold = jnp.maximum(key_k, key_p)                            # [B]
  min_logit = top + jnp.log(t.min_p)[:, None]                      # [B, 1]; -inf when off
  return (keys >= threshold[:, None]) & (scaled >= min_logit)


def _draw(logits: jax.Array, t: SamplingTensors, filters: bool) -> jax.Array:
  """Samples every row (greedy rows too; the caller overrides them)."""
  greedy = t.temperature <= 0.0
  temperature = jnp.where(greedy, 1.0, t.temperature)
  scaled = logits / temperature[:, None]                          # [B, V]
  if filters:
    # NOTE: a row without filters keeps every token, so it draws exactly as in "random".
    filtered = ~greedy & ((t.top_k > 0) | (t.top_p < 1.0) | (t.min_p > 0.0))   # [B]
    scaled = jnp.where(_keep_mask(scaled, t) | ~filtered[:, None], scaled, -jnp.inf)
  keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.PRNGKey(s), n))(t.seed, t.step)
  return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


def sample(logits: jax.Array, t: SamplingTensors,
           mode: str = "filtered") -> tuple[jax.Array, jax.Array]:
  """Picks one token per row.

  Args:
    logits: f32 [B, V] raw model logits.
    t: per-row parameters with batch size B.
    mode: static; "greedy" treats every row as greedy, "random" ignores top-k/p
      and min-p; `sampling_mode(t)` gives the cheapest exact one.
  Returns:
    token ids i32 [B] and their log-probabilities f32 [B] under the raw
    (unscaled, unfiltered) distribution.
  """
  if logits.ndim != 2 or logits.shape[0] != t.temperature.shape[0]:
    raise ValueError(f"logits {logits.shape} do not match {t.temperature.shape[0]} rows")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  logits = logits.astype(jnp.float32)
  tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)          # [B]
  if mode != "greedy":
    tokens = jnp.where(t.temperature <= 0.0, tokens, _draw(logits, t, mode == "filtered"))
  # log_softmax at the chosen token only: no [B, V] log-prob array is built.
  chosen = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]  # [B]
  return tokens, chosen - jax.nn.logsumexp(logits, axis=-1)
