"""The `pagedjax` shell: help texts and `generate --json` end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from models.reference import reference_generate
from serving import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_help_has_examples(command, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main([command, "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert "examples:" in out and f"pagedjax {command}" in out


def test_commands_registered():
  assert cli.COMMANDS[:2] == ["serving.commands.generate", "serving.commands.convert"]
  parser = cli.build_parser()
  assert {"generate", "convert"} <= set(parser._subparsers._group_actions[0].choices)


def test_generate_json_subprocess_matches_reference(smollm2_model):
  """Greedy --json output on the real model equals the dense reference."""
  proc = subprocess.run(
      [sys.executable, "-m", "serving.cli", "generate", "--json", "--max-tokens", "8",
       "What is the capital of France?"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.strip() == ""  # quiet by default
  result = json.loads(proc.stdout)
  tok = smollm2_model.tokenizer
  expected_prompt = tok.encode(tok.apply_chat_template(
      [{"role": "user", "content": "What is the capital of France?"}]), add_special_tokens=False)
  assert result["prompt_token_ids"] == expected_prompt
  expected = reference_generate(smollm2_model.config, smollm2_model.params,
                                expected_prompt, 8, smollm2_model.config.eos_token_ids)
  assert result["token_ids"] == expected
  assert result["text"] == tok.decode(expected)
  assert "Paris" in result["text"]
  assert result["finish_reason"] == ("stop" if expected[-1] in (2,) else "length")


def test_generate_sampling_seeded_in_process(smollm2_model, monkeypatch, capsys, caplog):
  """Same seed, same tokens; the --no-chat-template path; -v logs timings."""
  monkeypatch.setattr("models.load_model", lambda *a, **k: smollm2_model)
  args = ["-v", "generate", "--json", "--no-chat-template", "--max-tokens", "6",
          "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "7",
          "Once upon a time"]
  assert cli.main(args) == 0
  first = capsys.readouterr()
  assert cli.main(args) == 0
  second = capsys.readouterr()
  a, b = json.loads(first.out), json.loads(second.out)
  assert a["token_ids"] == b["token_ids"] and len(a["token_ids"]) == 6
  assert a["prompt_token_ids"] == smollm2_model.tokenizer.encode("Once upon a time")
  assert a["finish_reason"] == "length"
  assert "tokens/s" in caplog.text  # -v: timings logged at INFO
