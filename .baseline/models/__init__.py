"""The Llama-family model path: config, decoder, weights, tokenizer, reference."""
from models.config import ModelConfig, RopeScaling
from models.errors import ModelLoadError
from models.loader import LoadedModel, default_model_path, load_model

__all__ = ["ModelConfig", "RopeScaling", "ModelLoadError", "LoadedModel",
           "default_model_path", "load_model"]
