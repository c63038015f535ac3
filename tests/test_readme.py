"""The README's Python example, run verbatim: it must print an on-topic answer.

(Its client example runs against a real server in tests/serving/test_grpc_server.py.)
"""
from __future__ import annotations

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks(lang: str) -> list[str]:
  """The README's fenced code blocks of one language, in order."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_block_prints_an_on_topic_answer(smollm2_model, monkeypatch, capsys):
  (code,) = [b for b in readme_blocks("python") if "from engine import" in b]
  # NOTE: the default model, loaded once per session instead of once more here.
  monkeypatch.setattr("models.load_model", lambda *a, **k: smollm2_model)
  exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
  answer = capsys.readouterr().out.lower()
  # SmolLM2's greedy answer: "... a phenomenon known as Rayleigh scattering ..."
  assert "scattering" in answer and "blue" in answer and "light" in answer, answer
