"""The reference (oracle) path: dense causal attention over a contiguous
per-sequence cache, a full-sequence forward and a plain greedy generate loop.

The paged engine is tested against this. It runs the same `forward` as the
engine, only with `dense_attention` behind the attention seam.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.llama import Params, compute_logits, forward, params_dtype

_CACHE_ROUND = 512   # cache lengths are rounded up to this, so few compiles
_MIN_BUCKET = 16     # smallest padded prompt length


def dense_attention(q, k, v, layer_cache, attn_meta):
  """Dense causal attention for ONE sequence over a contiguous cache.

  layer_cache: [2, max_len, num_kv_heads, head_dim] (K then V).
  attn_meta: {"positions": int32 [T]}; token t sees cache slots <= positions[t].
  NOTE: K/V are written at their positions before attending, so slots past a
  query's position may hold stale or padding values; the causal mask hides them.
  """
  positions = attn_meta["positions"]                          # [T]
  cache = layer_cache.at[0, positions].set(k.astype(layer_cache.dtype))
  cache = cache.at[1, positions].set(v.astype(layer_cache.dtype))
  t, num_heads, head_dim = q.shape
  num_kv = k.shape[1]
  qg = q.reshape(t, num_kv, num_heads // num_kv, head_dim)    # [T, kv, group, D]
  scores = jnp.einsum("tkgd,skd->tkgs", qg, cache[0],
                      preferred_element_type=jnp.float32) / math.sqrt(head_dim)
  slots = jnp.arange(cache.shape[1])
  mask = slots[None, :] <= positions[:, None]                 # [T, max_len]
  scores = jnp.where(mask[:, None, None, :], scores, -jnp.inf)
  probs = jax.nn.softmax(scores, axis=-1)                     # float32
  out = jnp.einsum("tkgs,skd->tkgd", probs.astype(cache.dtype), cache[1],
                   preferred_element_type=jnp.float32)
  return out.reshape(t, num_heads, head_dim).astype(q.dtype), cache


def empty_caches(config: ModelConfig, max_len: int, dtype) -> tuple:
  """One zeroed [2, max_len, num_kv_heads, head_dim] cache per layer."""
  shape = (2, max_len, config.num_kv_heads, config.head_dim)
  return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(4,))
def dense_step(params: Params, config: ModelConfig, tokens, positions, caches,
               logit_index):
  """One forward over `tokens` [T] at `positions` [T]; returns float32 logits
  [vocab] of row `logit_index` and the updated caches."""
  hidden, caches = forward(params, config, tokens, positions, caches,
                           {"positions": positions}, dense_attention)
  row = jax.lax.dynamic_slice_in_dim(hidden, logit_index, 1, axis=0)  # [1, hidden]
  return compute_logits(params, config, row)[0], caches


def _bucket(n: int) -> int:
  return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def reference_logits(config: ModelConfig, params: Params,
                     token_ids: Sequence[int]) -> np.ndarray:
  """Full causal forward; returns float32 logits [len(token_ids), vocab].

  NOTE: the input is padded to a power-of-two bucket (fewer compiles); padding
  sits after the real tokens, so causality keeps it out of their rows.
  """
  n = len(token_ids)
  if n == 0:
    raise ValueError("token_ids must not be empty")
  bucket = _bucket(n)
  tokens = np.zeros(bucket, np.int32)
  tokens[:n] = token_ids
  caches = empty_caches(config, bucket, params_dtype(params))
  hidden = _full_forward(params, config, jnp.asarray(tokens), caches)
  return np.asarray(compute_logits(params, config, hidden[:n]))


@functools.partial(jax.jit, static_argnames=("config",))
def _full_forward(params: Params, config: ModelConfig, tokens, caches):
  positions = jnp.arange(tokens.shape[0], dtype=jnp.int32)
  hidden, _ = forward(params, config, tokens, positions, caches,
                      {"positions": positions}, dense_attention)
  return hidden


def dense_generate(config: ModelConfig, params: Params, prompt_token_ids: Sequence[int],
                   max_new_tokens: int, pick: Callable[[np.ndarray], int],
                   stop_token_ids: Sequence[int] = ()) -> tuple[list[int], bool]:
  """Prefill then decode one token at a time; `pick(logits [vocab]) -> id`.

  Returns (generated ids, stopped) where stopped means a stop id was produced
  (it is included in the output). Raises ValueError if it cannot fit.
  """
  n = len(prompt_token_ids)
  if n == 0:
    raise ValueError("prompt_token_ids must not be empty")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if n + max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) exceeds the "
                     f"model's context ({config.max_position_embeddings})")
  bucket = _bucket(n)
  max_len = -(-max(bucket, n + max_new_tokens) // _CACHE_ROUND) * _CACHE_ROUND
  caches = empty_caches(config, max_len, params_dtype(params))
  tokens = np.zeros(bucket, np.int32)
  tokens[:n] = prompt_token_ids
  # NOTE: padded prompt slots get positions n..bucket-1 (< max_len); decode
  # overwrites each of those slots before any query can see it.
  logits, caches = dense_step(params, config, jnp.asarray(tokens),
                              jnp.arange(bucket, dtype=jnp.int32), caches, n - 1)
  out: list[int] = []
  stops = set(stop_token_ids)
  for step in range(max_new_tokens):
    token = int(pick(np.asarray(logits)))
    out.append(token)
    if token in stops:
      return out, True
    if step + 1 == max_new_tokens:
      break
    pos = jnp.asarray([n + step], jnp.int32)
    logits, caches = dense_step(params, config, jnp.asarray([token], jnp.int32),
                                pos, caches, 0)
  return out, False


def reference_generate(config: ModelConfig, params: Params, prompt_token_ids: list[int],
                       max_new_tokens: int, eos_token_ids: Sequence[int] = ()) -> list[int]:
  """Greedy generation; stops after an EOS id (included) or max_new_tokens."""
  tokens, _ = dense_generate(config, params, prompt_token_ids, max_new_tokens,
                             lambda logits: int(np.argmax(logits)), eos_token_ids)
  return tokens
