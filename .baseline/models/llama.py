"""The Llama-family decoder (Flax linen) and the pure functions the engine jits.

Tokens live on one flat packed axis [T] (tokens of several sequences, no batch
axis). Attention goes through a single seam, `attention_fn`, so the dense
reference and the paged Pallas kernels are interchangeable:

  attention_fn(q, k, v, layer_cache, attn_meta) -> (out, layer_cache)
    q [T, num_heads, head_dim], k/v [T, num_kv_heads, head_dim] (rotary applied)
    out [T, num_heads, head_dim]; it applies the 1/sqrt(head_dim) scale and
    whatever causal/sequence masking attn_meta describes.

The model never looks inside a layer cache or attn_meta.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.layers import RMSNorm, SwiGLU, apply_rope, rope_inv_freq

AttentionFn = Callable[..., tuple[jax.Array, Any]]
Params = dict[str, Any]


class Attention(nn.Module):
  """QKV projections, rotary, the attention seam, output projection."""
  config: ModelConfig
  attention_fn: AttentionFn
  dtype: jnp.dtype = jnp.float32

  def _qkv(self, x):
    """q [T, heads, head_dim], k/v [T, kv_heads, head_dim] from fused or separate kernels."""
    cfg, t = self.config, x.shape[0]
    if self.has_variable("params", "qkv_kernel"):        # see models/fused.py
      w = self.get_variable("params", "qkv_kernel")      # [hidden, G, n]
      y = jnp.einsum("th,hgn->tgn", x, w.astype(self.dtype))   # [T, G, n]
      if cfg.attention_bias:
        y = y + self.get_variable("params", "qkv_bias").astype(self.dtype)
      g = w.shape[1]
      q_cols, kv_cols = cfg.num_heads // g * cfg.head_dim, cfg.num_kv_heads // g * cfg.head_dim
      q, k, v = jnp.split(y, [q_cols, q_cols + kv_cols], axis=-1)
    else:
      def proj(heads, name):
        return nn.Dense(heads * cfg.head_dim, use_bias=cfg.attention_bias, dtype=self.dtype,
                        param_dtype=self.dtype, name=name)(x)
      q, k, v = (proj(cfg.num_heads, "q_proj"), proj(cfg.num_kv_heads, "k_proj"),
                 proj(cfg.num_kv_heads, "v_proj"))
    return (q.reshape(t, cfg.num_heads, cfg.head_dim), k.reshape(t, cfg.num_kv_heads, cfg.head_dim),
            v.reshape(t, cfg.num_kv_heads, cfg.head_dim))

  @nn.compact
  def __call__(self, x, positions, layer_cache, attn_meta):
    cfg = self.config
    t = x.shape[0]
    q, k, v = self._qkv(x)
    inv_freq = rope_inv_freq(cfg)
    q = apply_rope(q, positions, inv_freq)               # [T, num_heads, head_dim]
    k = apply_rope(k, positions, inv_freq)               # [T, num_kv_heads, head_dim]
    with jax.named_scope("attention_fn"):
      out, layer_cache = self.attention_fn(q, k, v, layer_cache, attn_meta)
    out = out.astype(self.dtype).reshape(t, cfg.num_heads * cfg.head_dim)
    out = nn.Dense(cfg.hidden_size, use_bias=False, dtype=self.dtype,
                   param_dtype=self.dtype, name="o_proj")(out)
    return out, layer_cache


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: ModelConfig
  attention_fn: AttentionFn
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, positions, layer_cache, attn_meta):
    eps = self.config.rms_norm_eps
    h = RMSNorm(eps, self.dtype, name="attn_norm")(x)
    h, layer_cache = Attention(self.config, self.attention_fn, self.dtype, name="attn")(
        h, positions, layer_cache, attn_meta)
    x = x + h
    h = RMSNorm(eps, self.dtype, name="mlp_norm")(x)
    x = x + SwiGLU(self.config, self.dtype, name="mlp")(h)
    return x, layer_cache


class LlamaModel(nn.Module):
  """Embedding, decoder layers and final norm; returns normed hidden states."""
  config: ModelConfig
  attention_fn: AttentionFn
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, positions, kv_caches, attn_meta):
    cfg = self.config
    embed = self.param("embed", nn.initializers.normal(0.02),
                       (cfg.vocab_size, cfg.hidden_size), self.dtype)
    x = jnp.take(embed, tokens, axis=0).astype(self.dtype)  # [T, hidden]
    new_caches = []
    for i in range(cfg.num_layers):
      with jax.named_scope(f"layer_{i}"):
        x, cache = DecoderLayer(cfg, self.attention_fn, self.dtype, name=f"layers_{i}")(
            x, positions, kv_caches[i], attn_meta)
      new_caches.append(cache)
    x = RMSNorm(cfg.rms_norm_eps, self.dtype, name="final_norm")(x)
    return x, tuple(new_caches)


def params_dtype(params: Params) -> jnp.dtype:
  """The compute dtype, taken from the embedding table."""
  return params["embed"].dtype


def forward(params: Params, config: ModelConfig, tokens: jax.Array, positions: jax.Array,
            kv_caches: tuple, attn_meta: Any, attention_fn: AttentionFn
            ) -> tuple[jax.Array, tuple]:
  """Runs the decoder over a flat packed token axis.

  Args:
    params: the param pytree (compute dtype = its dtype).
    config: static model config.
    tokens: int32 [T]; positions: int32 [T] (position of each token in its sequence).
    kv_caches: tuple, one opaque entry per layer, handed to attention_fn.
    attn_meta: opaque pytree handed to attention_fn.
    attention_fn: the attention seam (see module docstring).
  Returns:
    (hidden [T, hidden_size] after the final norm, updated kv_caches).
  """
  if len(kv_caches) != config.num_layers:
    raise ValueError(f"kv_caches has {len(kv_caches)} entries, model has "
                     f"{config.num_layers} layers")
  model = LlamaModel(config, attention_fn, params_dtype(params))
  with jax.named_scope("llama_forward"):
    return model.apply({"params": params}, tokens, positions, tuple(kv_caches), attn_meta)


def compute_logits(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
  """Projects hidden states [N, hidden_size] to float32 logits [N, vocab]."""
  with jax.named_scope("lm_head"):
    if config.tie_word_embeddings:
      w = params["embed"]                                # [vocab, hidden]
      return jnp.einsum("nh,vh->nv", hidden.astype(w.dtype), w,
                        preferred_element_type=jnp.float32)
    w = params["lm_head"]                                # [hidden, vocab]
    return jnp.einsum("nh,hv->nv", hidden.astype(w.dtype), w,
                      preferred_element_type=jnp.float32)
