"""Weight loaders: GGUF, HF safetensors folders, orbax checkpoints, random init."""
