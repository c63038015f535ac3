"""The `pagedjax` shell: help texts (every default true), flags, errors, and `generate`."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from engine.sampling_params import SamplingParams
from models.reference import reference_generate
from serving import cli
from serving.help_format import show_default
from serving.sampling_flags import sampling_params_from_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKY = "Why is the sky blue?"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
  """Every command's parser; nested ones (`bench serve`) under their joined names."""
  out = dict(cli.build_parser()._subparsers._group_actions[0].choices)
  for name, parser in list(out.items()):
    if parser._subparsers is not None:
      for sub, p in parser._subparsers._group_actions[0].choices.items():
        out[f"{name} {sub}"] = p
  return out


def _no_model(monkeypatch) -> None:
  """Makes any model load fail the test: these paths must stop before it."""
  def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr("models.load_model", refuse)


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_help_has_examples(command, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main([command, "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert "examples:" in out and f"pagedjax {command}" in out


def test_commands_registered():
  assert cli.COMMANDS[:2] == ["serving.commands.generate", "serving.commands.convert"]
  assert {"generate", "convert", "serve", "client", "batch", "sweep", "simulate"} <= set(
      _subparsers())


def _shown_default(text: str) -> str:
  """What "(default: X)" in a help text says X is (parentheses inside X allowed)."""
  start = text.index("(default")
  depth = 0
  for end in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[end], 0)
    if depth == 0:
      break
  return text[start + len("(default"):end].lstrip(":").strip()


@pytest.mark.parametrize("command", [None, "generate", "convert", "serve", "client", "batch",
                                     "sweep", "simulate", "bench serve"])
def test_every_flag_shows_its_real_default(command):
  top = cli.build_parser()
  parser = top if command is None else _subparsers()[command]
  formatter = parser._get_formatter()
  checked = 0
  for action in parser._actions:
    if (not action.option_strings or action.required
        or isinstance(action, argparse._HelpAction)):
      continue
    text = formatter._expand_help(action)
    flag = action.option_strings[-1]
    assert text.count("(default") == 1, f"{command} {flag}: {text!r}"
    shown, default = _shown_default(text), action.default
    if default is argparse.SUPPRESS:        # -v after the command: the top-level default
      default = top.get_default(action.dest)
    if default is None:                     # worked out at run time: help must say how
      assert shown and shown not in ("None", "0", "on", "off"), f"{command} {flag}: {text!r}"
    else:
      # NOTE: "(default: X; why)" may explain X after a semicolon.
      assert shown.split(";")[0] == show_default(default), (
          f"{command} {flag}: {text!r} vs {default!r}")
    checked += 1
  assert checked >= (1 if command is None else 2)


@pytest.mark.parametrize("command", ["generate", "client", "batch"])
def test_commands_share_the_sampling_params_defaults(command):
  args = cli.build_parser().parse_args(
      [command, SKY] if command != "batch" else [command, "--input", "i", "--output", "o"])
  assert sampling_params_from_args(args) == SamplingParams()
  assert args.chat_template is True
  assert SamplingParams().greedy and SamplingParams().max_tokens == 128


def test_bare_pagedjax_prints_the_help(capsys):
  assert cli.main([]) == 2
  err = capsys.readouterr().err
  assert err.startswith("usage: pagedjax") and "generate" in err and "batch" in err
  assert "give a COMMAND" in err


def test_verbose_before_or_after_the_command():
  parse = cli.build_parser().parse_args
  assert parse(["-v", "generate", SKY]).verbose
  assert parse(["generate", "-v", SKY]).verbose
  assert parse(["generate", SKY, "--verbose"]).verbose
  assert not parse(["generate", SKY]).verbose


def test_prefix_cache_switch_is_one_flag():
  parser = _subparsers()["generate"]
  actions = [a for a in parser._actions if a.dest == "engine_enable_prefix_caching"]
  assert len(actions) == 1
  assert {"--no-prefix-cache", "--no-enable-prefix-caching"} <= set(actions[0].option_strings)
  for spelling in ("--no-prefix-cache", "--no-enable-prefix-caching"):
    assert parser.parse_args([spelling, SKY]).engine_enable_prefix_caching is False
  assert parser.parse_args(["--enable-prefix-caching", SKY]).engine_enable_prefix_caching
  # The sampling --seed and --engine-seed no longer land in one dest.
  args = parser.parse_args(["--seed", "7", SKY])
  assert (args.seed, args.engine_seed) == (7, 0)


@pytest.mark.parametrize("argv, flag", [
    (["generate", "--top-p", "0", SKY], "--top-p"),
    (["generate", "--max-tokens", "0", SKY], "--max-tokens"),
    (["generate", "--block-size", "12", SKY], "--block-size"),
    (["generate", "--kv-cache-dtype", "int4", SKY], "--kv-cache-dtype"),
    (["generate", "--max-num-seqs", "0", SKY], "--max-num-seqs"),
    (["batch", "--input", __file__, "--output", "x.jsonl", "--temperature", "-1"],
     "--temperature"),
    (["client", "--min-p", "2", SKY], "--min-p"),
])
def test_bad_values_are_refused_naming_the_flag(argv, flag, monkeypatch, capsys):
  _no_model(monkeypatch)
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("pagedjax: error: ") and f"{flag} " in err, err
  assert flag[2:].replace("-", "_") not in err.replace(flag, "") and "Traceback" not in err


def test_empty_prompt_is_refused_before_loading(monkeypatch, capsys):
  _no_model(monkeypatch)
  for argv in (["generate", ""], ["generate", "--no-chat-template", ""], ["client", ""]):
    assert cli.main(argv) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_generate_json_subprocess_matches_reference(smollm2_model):
  """Greedy --json output on the real model equals the dense reference; progress on stderr."""
  proc = subprocess.run(
      [sys.executable, "-m", "serving.cli", "generate", "--json", "--max-tokens", "8",
       "What is the capital of France?"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stderr.splitlines()
  assert all(line.startswith("pagedjax: ") for line in lines), proc.stderr
  assert lines[0].startswith("pagedjax: loading the bundled SmolLM2-135M-Instruct")
  assert any("KV cache:" in line for line in lines)
  assert any(line.startswith("pagedjax: engine ready in") for line in lines)
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


def test_generate_plain_mode_says_when_cut_and_prints_logprobs(smollm2_model, monkeypatch,
                                                               capsys):
  monkeypatch.setattr("models.load_model", lambda *a, **k: smollm2_model)
  assert cli.main(["generate", "--no-progress", "--logprobs", "--max-tokens", "4",
                   "--json", SKY]) == 0
  want = json.loads(capsys.readouterr().out)
  assert cli.main(["generate", "--no-progress", "--logprobs", "--max-tokens", "4", SKY]) == 0
  out, err = capsys.readouterr()
  assert out == want["text"].strip() + "\n"
  rows = [line.split() for line in err.splitlines()[1:5]]
  assert [int(r[1]) for r in rows] == want["token_ids"]
  assert [float(r[2]) for r in rows] == pytest.approx(want["logprobs"], abs=1e-4)
  assert err.splitlines()[-1] == ("pagedjax: the answer was cut at --max-tokens 4; pass a "
                                  "larger --max-tokens for the rest")
  assert "loading" not in err          # --no-progress
