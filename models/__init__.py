"""The Llama-family model path: config, decoder, weights, tokenizer, reference."""
from models.config import ModelConfig, RopeScaling
from models.errors import ModelLoadError


def __getattr__(name):
  # NOTE: the loader imports JAX; host-only users of models/ (the detokenizer, the
  # simulator's output processing) must not pay for it, so it loads on first use.
  if name in ("LoadedModel", "default_model_path", "load_model"):
    from models import loader
    return getattr(loader, name)
  raise AttributeError(name)


__all__ = ["ModelConfig", "RopeScaling", "ModelLoadError", "LoadedModel",
           "default_model_path", "load_model"]
