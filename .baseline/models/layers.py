"""Building blocks of the Llama-family decoder: RMSNorm, rotary, SwiGLU MLP."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig, RopeScaling


class RMSNorm(nn.Module):
  """Root-mean-square norm; statistics accumulate in float32."""
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return y * scale.astype(self.dtype)


class SwiGLU(nn.Module):
  """The gated MLP: down(silu(gate(x)) * up(x))."""
  config: ModelConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype,
                                     param_dtype=self.dtype, name=name)
    inter = self.config.intermediate_size
    if self.has_variable("params", "gate_up_kernel"):    # see models/fused.py
      w = self.get_variable("params", "gate_up_kernel")  # [hidden, G, 2, intermediate / G]
      y = jnp.einsum("th,hgcn->tgcn", x, w.astype(self.dtype))   # [T, G, 2, inter / G]
      gate = y[:, :, 0].reshape(x.shape[0], inter)       # [T, intermediate]
      up = y[:, :, 1].reshape(x.shape[0], inter)
    else:
      gate = dense(inter, "gate_proj")(x)                # [T, intermediate]
      up = dense(inter, "up_proj")(x)                    # [T, intermediate]
    return dense(self.config.hidden_size, "down_proj")(nn.silu(gate) * up)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
  """Inverse rotary frequencies [head_dim // 2] (float32), scaled if configured.

  Computed in numpy from the static config, so it is a compile-time constant.
  """
  dim = config.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
  inv_freq = (1.0 / (config.rope_theta ** exponents)).astype(np.float32)
  if config.rope_scaling is not None:
    inv_freq = _llama3_scale(inv_freq, config.rope_scaling)
  return inv_freq.astype(np.float32)


def _llama3_scale(inv_freq: np.ndarray, rs: RopeScaling) -> np.ndarray:
  """Llama-3 scaling: long wavelengths divided by `factor`, short ones kept,
  a linear blend (in 1/wavelength) in between."""
  wavelen = 2.0 * math.pi / inv_freq
  low_freq_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
  high_freq_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
  ratio = rs.original_max_position_embeddings / wavelen
  smooth = (ratio - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
  blended = (1.0 - smooth) * scaled / rs.factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, blended, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates `x` [T, heads, head_dim] by `positions` [T] (HF half-split layout).

  NOTE: the pairs rotated together are (i, i + head_dim/2), the HF layout; GGUF
  weights are un-permuted at load time to match it.
  """
  angles = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
  cos = jnp.cos(angles)[:, None, :]                    # [T, 1, head_dim/2]
  sin = jnp.sin(angles)[:, None, :]                    # [T, 1, head_dim/2]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)                  # [T, heads, head_dim/2] each
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
