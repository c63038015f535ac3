"""`pagedjax convert` checkpoints: save, restore, same logits."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from models import load_model
from models.reference import reference_logits
from models.weights.orbax_io import MARKER, save_checkpoint
from serving import cli
from tests.models.helpers import TINY_HF_CONFIG, write_hf_folder, write_json

IDS = [1, 5, 9, 33, 2, 17, 40, 63]


def test_convert_hf_folder_roundtrip(tmp_path, capsys):
  src = write_hf_folder(str(tmp_path / "hf"), TINY_HF_CONFIG, seed=3)
  dst = str(tmp_path / "ckpt")
  assert cli.main(["convert", src, dst]) == 0
  assert "wrote" in capsys.readouterr().out
  assert os.path.isfile(os.path.join(dst, MARKER))
  before, after = load_model(src), load_model(dst)
  assert after.config == before.config
  for a, b in zip(jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(after.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(reference_logits(before.config, before.params, IDS),
                                reference_logits(after.config, after.params, IDS))


def test_random_config_roundtrip_bf16_and_tokenizer(tmp_path, smollm2_model):
  """A checkpoint keeps the tokenizer and chat template; bf16 restores as bf16."""
  cfg_path = write_json(str(tmp_path / "tiny.json"), TINY_HF_CONFIG)
  model = load_model(f"random:{cfg_path}", dtype="bfloat16")
  dst = str(tmp_path / "ckpt")
  save_checkpoint(dst, model.config, model.params, smollm2_model.tokenizer)
  restored = load_model(dst, dtype="bfloat16")
  assert restored.params["embed"].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(reference_logits(model.config, model.params, IDS),
                                reference_logits(restored.config, restored.params, IDS))
  tok, tok2 = smollm2_model.tokenizer, restored.tokenizer
  text = "Héllo 世界 😀\n\n  code()"
  assert tok2.encode(text) == tok.encode(text)
  chat = [{"role": "user", "content": "hi"}]
  assert tok2.apply_chat_template(chat) == tok.apply_chat_template(chat)
  assert (tok2.bos_token_id, tok2.eos_token_ids) == (tok.bos_token_id, tok.eos_token_ids)


def test_convert_refuses_existing_checkpoint(tmp_path, capsys):
  src = write_hf_folder(str(tmp_path / "hf"), TINY_HF_CONFIG)
  dst = str(tmp_path / "ckpt")
  assert cli.main(["convert", src, dst]) == 0
  assert cli.main(["convert", src, dst]) == 2
  assert "already holds a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["smollm2-135m", "llama3.2-1b", "llama3-8b", "qwen2.5-0.5b"])
def test_shipped_configs_parse(name):
  from models.config import ModelConfig
  from models.weights.random_init import config_path
  cfg = ModelConfig.from_json(config_path(name))
  assert cfg.num_heads % cfg.num_kv_heads == 0
  assert (cfg.rope_scaling is not None) == (name == "llama3.2-1b")
  assert cfg.attention_bias == (name == "qwen2.5-0.5b")
