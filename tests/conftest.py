"""Session-wide fixtures shared by every test area."""
from __future__ import annotations

import pytest

from models import load_model
from models.loader import default_model_path


@pytest.fixture(scope="session")
def smollm2_path() -> str:
  """Path of the default SmolLM2-135M-Instruct Q4_1 GGUF."""
  return default_model_path()


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path):
  """The default model loaded once per session (float32 params + tokenizer)."""
  return load_model(smollm2_path, dtype="float32")
