"""`pagedjax convert` checkpoints: save, restore, same logits."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from models import load_model
from models.reference import reference_logits
from models import ModelLoadError
from models.weights.orbax_io import MARKER, save_checkpoint
from serving import cli
from tests.models.helpers import TINY_HF_CONFIG, write_hf_folder, write_json

IDS = [1, 5, 9, 33, 2, 17, 40, 63]


def test_convert_hf_folder_roundtrip(tmp_path, capsys):
  src = write_hf_folder(str(tmp_path / "hf"), TINY_HF_CONFIG, seed=3)
  dst = str(tmp_path / "ckpt")
  assert cli.main(["convert", src, dst]) == 0
  assert "wrote" in capsys.readouterr().out
  with open(os.path.join(dst, MARKER), encoding="utf-8") as f:
    assert json.load(f)["format_version"] == 2          # the layers stacked as served
  before, after = load_model(src), load_model(dst)
  assert after.params["layers"]["mlp"]["down_proj"]["kernel"].shape == (2, 48, 32)
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


def _write_format_1(folder: str, model) -> None:
  """A checkpoint as `pagedjax convert` wrote it before the layers were stacked (format 1:
  one `layers_{i}` subtree per layer)."""
  import orbax.checkpoint as ocp
  tree = {k: v for k, v in model.params.items() if k != "layers"}
  for i in range(model.config.num_layers):
    tree[f"layers_{i}"] = jax.tree_util.tree_map(lambda x: np.asarray(x[i]),
                                                 model.params["layers"])
  os.makedirs(folder)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(folder, "params"), tree)
  write_json(os.path.join(folder, "config.json"), model.config.to_hf_config())
  write_json(os.path.join(folder, MARKER), {"format_version": 1, "dtype": "float32"})


def test_old_per_layer_checkpoint_still_loads_stacked(tmp_path):
  src = load_model(write_hf_folder(str(tmp_path / "hf"), TINY_HF_CONFIG, seed=5))
  dst = str(tmp_path / "old")
  _write_format_1(dst, src)
  restored = load_model(dst)
  assert jax.tree_util.tree_structure(restored.params) == \
      jax.tree_util.tree_structure(src.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, src.params)
  assert restored.params["layers"]["attn"]["q_proj"]["kernel"].shape[0] == 2
  np.testing.assert_array_equal(reference_logits(src.config, src.params, IDS),
                                reference_logits(restored.config, restored.params, IDS))


def test_unknown_checkpoint_format_fails_clearly(tmp_path):
  dst = str(tmp_path / "future")
  assert cli.main(["convert", write_hf_folder(str(tmp_path / "hf"), TINY_HF_CONFIG), dst]) == 0
  write_json(os.path.join(dst, MARKER), {"format_version": 9})
  with pytest.raises(ModelLoadError, match="checkpoint format 9 is not supported"):
    load_model(dst)


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
