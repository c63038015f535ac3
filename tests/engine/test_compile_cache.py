"""The persistent compilation cache is on by default: a second process with the same
shapes loads its steps from the files the first one wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from engine import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "tests", "experiments", "tiny_llama.json")
# An engine warms up; prints where its cache is, how many executables JAX read from the
# persistent cache, and how many step shapes it planned.
SCRIPT = f"""
import json, jax
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None)
from engine import LLM
llm = LLM("random:{TINY}", max_num_seqs=2, max_batch_tokens=16, max_model_len=64,
          num_blocks=64, warmup=True)
print(json.dumps(dict(dir=llm.engine.compilation_cache_dir, hits=len(hits),
                      loaded=llm.engine.runner.num_loaded,
                      planned=len(llm.engine.runner.planned_shapes()),
                      compiled=llm.engine.stats().num_compilations)))
"""


def _engine_process(env: dict) -> dict:
  env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)     # NOTE: the test runner's own cache
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True, timeout=600)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _files(folder: str) -> list[str]:
  return [f for _, _, names in os.walk(folder) for f in names]


def test_a_second_process_reads_the_default_cache(tmp_path):
  env = {"XDG_CACHE_HOME": str(tmp_path), compile_cache.ENV: None}
  folder = os.path.join(tmp_path, "pagedjax", "xla")
  first = _engine_process(env)
  assert first["dir"] == folder and first["compiled"] == first["planned"] == 3
  written = _files(folder)
  assert len([f for f in written if f.startswith("jit_packed")]) == 3     # the three steps
  second = _engine_process(env)
  assert second["dir"] == folder and second["compiled"] == 3
  assert second["hits"] >= 3 and first["hits"] == 0 and second["loaded"] == 0
  assert sorted(_files(folder)) == sorted(written)          # read, nothing new to write
  assert not os.path.exists(os.path.join(folder, "executables"))   # NOTE: GPUs only


def test_the_cache_can_be_moved_or_turned_off(tmp_path):
  moved = os.path.join(tmp_path, "moved")
  got = _engine_process({"XDG_CACHE_HOME": str(tmp_path / "xdg"), compile_cache.ENV: moved})
  assert got["dir"] == moved and _files(moved)
  off = _engine_process({"XDG_CACHE_HOME": str(tmp_path / "xdg"), compile_cache.ENV: "off"})
  assert off["dir"] is None and not os.path.exists(tmp_path / "xdg")


def test_requested_dir_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.requested_dir(None) == os.path.join(tmp_path, "pagedjax", "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert compile_cache.requested_dir(None) == os.path.expanduser("~/.cache/pagedjax/xla")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.requested_dir(None) == str(tmp_path / "env")
  assert compile_cache.requested_dir(str(tmp_path / "field")) == str(tmp_path / "field")
  for off in ("", "off", "OFF", "none"):
    assert compile_cache.requested_dir(off) is None
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.requested_dir(None) is None


def test_configure_never_moves_a_cache_in_use(tmp_path):
  """Process-wide: the first directory stays (JAX_COMPILATION_CACHE_DIR here, when the test
  runner sets it); later engines asking for another one, or none, get it too."""
  import jax
  in_use = compile_cache.configure(str(tmp_path / "first"))
  assert in_use == jax.config.jax_compilation_cache_dir
  for setting in (None, "off", str(tmp_path / "second")):
    assert compile_cache.configure(setting) == in_use
  assert jax.config.jax_compilation_cache_dir == in_use
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
