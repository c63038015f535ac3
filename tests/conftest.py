"""Session-wide fixtures shared by every test area."""
from __future__ import annotations

import os

# NOTE: must precede the first JAX computation (the CPU client reads it when it
# starts). Mosaic GPU interpret mode runs one CPU thread per warpgroup, each
# blocking an XLA pool thread at barriers; a 2-core machine's default pool of
# 2 deadlocks (pallas_kernels/prefill_mosaic.interpret_params).
if not (os.environ.get("PJRT_NPROC") or os.environ.get("NPROC")):
  os.environ["PJRT_NPROC"] = str(max(8, os.cpu_count() or 1))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

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
