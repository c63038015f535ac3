"""Random weights from a named config in configs/ (for benchmarks)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.weights.layout import expected_shape, param_entries, set_path

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def config_path(name: str) -> str:
  """The path of configs/<name>.json (a path to a .json file is used as is)."""
  if name.endswith(".json"):
    return name
  return os.path.join(_CONFIG_DIR, f"{name}.json")


def available_configs() -> list[str]:
  if not os.path.isdir(_CONFIG_DIR):
    return []
  return sorted(f[:-5] for f in os.listdir(_CONFIG_DIR) if f.endswith(".json"))


def random_params(config: ModelConfig, dtype: jnp.dtype = jnp.float32, seed: int = 0) -> dict:
  """Normal(0, 0.02) matrices, unit norm scales, zero biases."""
  params: dict = {}
  key = jax.random.key(seed)
  for i, (path, _, _) in enumerate(param_entries(config)):
    shape = expected_shape(config, path)
    if path[-1] == "scale":
      value = jnp.ones(shape, dtype)
    elif path[-1] == "bias":
      value = jnp.zeros(shape, dtype)
    else:
      value = (0.02 * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
               ).astype(dtype)
    set_path(params, path, value)
  return params


def load_random(name: str, dtype: jnp.dtype = jnp.float32) -> tuple[ModelConfig, dict]:
  path = config_path(name)
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path}: no such config (available: "
                         f"{', '.join(available_configs()) or 'none'})")
  config = ModelConfig.from_json(path)
  return config, random_params(config, dtype)
