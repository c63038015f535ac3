"""Expected failures: one-line ModelLoadError naming the file and the problem;
the CLI exits 2 with `pagedjax: error: ...` and no traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from models import ModelLoadError, load_model
from serving import cli
from tests.models.helpers import TINY_HF_CONFIG, write_hf_folder, write_json


@pytest.fixture(scope="module")
def gguf_bytes(smollm2_path) -> bytes:
  with open(smollm2_path, "rb") as f:
    return f.read()


def _one_line_error(path: str, *fragments: str) -> str:
  with pytest.raises(ModelLoadError) as info:
    load_model(path)
  message = str(info.value)
  assert "\n" not in message
  assert str(path) in message
  for fragment in fragments:
    assert fragment in message, message
  return message


def test_missing_file(tmp_path):
  _one_line_error(str(tmp_path / "nope.gguf"), "file not found")


@pytest.mark.parametrize("size", [100, 3_000_000, 50_000_000])
def test_truncated_gguf(tmp_path, gguf_bytes, size):
  path = tmp_path / "trunc.gguf"
  path.write_bytes(gguf_bytes[:size])
  _one_line_error(str(path), "truncated or corrupt")


def test_corrupt_gguf_magic(tmp_path, gguf_bytes):
  path = tmp_path / "bad_magic.gguf"
  path.write_bytes(b"XXXX" + gguf_bytes[4:200_000])
  _one_line_error(str(path), "not a valid GGUF")


def test_corrupt_gguf_header(tmp_path, gguf_bytes):
  garbage = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
  path = tmp_path / "garbage.gguf"
  path.write_bytes(gguf_bytes[:24] + garbage + gguf_bytes[4024:4_000_000])
  _one_line_error(str(path), "GGUF")


def test_unsupported_gguf_architecture(tmp_path):
  import gguf
  path = tmp_path / "gpt2.gguf"
  writer = gguf.GGUFWriter(str(path), "gpt2")
  writer.add_block_count(1)
  writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  _one_line_error(str(path), "unsupported architecture 'gpt2'")


def test_unsupported_hf_architecture(tmp_path):
  folder = write_hf_folder(str(tmp_path / "m"), TINY_HF_CONFIG)
  write_json(os.path.join(folder, "config.json"),
             dict(TINY_HF_CONFIG, architectures=["GPT2LMHeadModel"], model_type="gpt2"))
  _one_line_error(folder, "unsupported architecture")


def test_shape_mismatch(tmp_path):
  folder = write_hf_folder(str(tmp_path / "m"), dict(TINY_HF_CONFIG, intermediate_size=40),
                           weights_config=TINY_HF_CONFIG)
  _one_line_error(folder, "shape mismatch", "gate_proj")


def test_folder_without_config(tmp_path):
  _one_line_error(str(tmp_path), "no config.json")


def test_good_tiny_folder_loads(tmp_path):
  """The control: the same helper without a mismatch loads fine."""
  loaded = load_model(write_hf_folder(str(tmp_path / "m"), TINY_HF_CONFIG))
  assert loaded.config.intermediate_size == 48 and loaded.tokenizer is None


def test_cli_error_in_process(tmp_path, capsys):
  # NOTE: --no-progress: only the error itself on stderr (no "loading ..." line).
  rc = cli.main(["generate", "--no-progress", "--model", str(tmp_path / "missing.gguf"), "hi"])
  err = capsys.readouterr().err
  assert rc == 2
  assert err.strip().splitlines() == [f"pagedjax: error: {tmp_path / 'missing.gguf'}: file not found"]


def test_cli_bad_flag_value(capsys, tmp_path):
  rc = cli.main(["generate", "--temperature", "-1", "--model", str(tmp_path / "x.gguf"), "hi"])
  assert rc == 2
  assert "temperature must be 0 (greedy) or in [0.01, 100.0], got -1.0" in capsys.readouterr().err


def test_cli_corrupt_file_subprocess_no_traceback(tmp_path, gguf_bytes):
  path = tmp_path / "trunc.gguf"
  path.write_bytes(gguf_bytes[:3_000_000])
  proc = subprocess.run([sys.executable, "-m", "serving.cli", "generate", "--no-progress",
                         "--model", str(path), "hi"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"pagedjax: error: {path}: "), proc.stderr
