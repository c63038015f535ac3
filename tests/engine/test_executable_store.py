"""The executable store: a compiled step saved whole loads back and computes the same; any
change to what decides the step is a miss; a damaged file is a miss, not a failure."""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from engine import executable_store


@functools.partial(jax.jit, donate_argnums=(1,))
def _step(params, cache, x):
  return cache.at[0].add(x.sum()), {"y": params["w"] @ x}


def _args():
  return {"w": jnp.arange(16.0).reshape(4, 4)}, jnp.zeros(8), jnp.ones(4)


def test_saved_executable_loads_back_with_its_signature(tmp_path):
  """NOTE: not run: on the CPU a deserialized executable may fail to find its JIT-compiled
  functions ("Function ... not found"), which is why the store is GPU-only. On an H200 a
  second process ran loaded steps and gave the dense reference's tokens (docs/benchmarks.md)."""
  store = executable_store.ExecutableStore(str(tmp_path), None)
  key = ("decode", (("tokens", "int32", (4,), 0),), 1)
  assert store.load(key) is None
  compiled = _step.lower(*_args()).compile()
  store.save(key, compiled)
  store.save(key, compiled)                          # once: the file exists
  assert store.num_saved == 1 and len(os.listdir(tmp_path)) == 1
  loaded = executable_store.ExecutableStore(str(tmp_path), None).load(key)
  assert loaded is not None
  assert loaded.in_tree == compiled.in_tree and loaded.out_tree == compiled.out_tree
  assert [a.shape for a in jax.tree.leaves(loaded.out_info)] == [
      a.shape for a in jax.tree.leaves(compiled.out_info)]


def test_another_key_options_or_source_is_a_miss(tmp_path, monkeypatch):
  store = executable_store.ExecutableStore(str(tmp_path), None)
  key = ("decode", (), 1)
  store.save(key, _step.lower(*_args()).compile())
  assert store.load(("decode", (), 4)) is None
  assert executable_store.ExecutableStore(str(tmp_path), {"xla_opt": 1}).load(key) is None
  monkeypatch.setattr(executable_store, "source_digest", lambda: "edited")
  assert executable_store.ExecutableStore(str(tmp_path), None).load(key) is None


def test_another_model_config_or_backend_is_a_miss(tmp_path):
  """Same shapes, other closed-over steps (an attention backend, a rope theta): a miss."""
  key = ("decode", (), 1)
  store = executable_store.ExecutableStore(str(tmp_path), None, steps="(cfg, 'mosaic')")
  store.save(key, _step.lower(*_args()).compile())
  assert executable_store.ExecutableStore(str(tmp_path), None, steps="(cfg, 'triton')").load(
      key) is None
  assert executable_store.ExecutableStore(str(tmp_path), None).load(key) is None
  assert executable_store.ExecutableStore(str(tmp_path), None, steps="(cfg, 'mosaic')").load(
      key) is not None


def test_runner_names_its_model_config_and_backend(monkeypatch, tmp_path):
  """The runner's store key names what make_steps memoizes on."""
  from engine import runner as runner_lib  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(runner_lib.executable_store, "open_store",
                      lambda *a, steps: seen.append(steps))
  from engine import LLM  # pylint: disable=g-import-not-at-top
  for backend in ("xla", None):
    LLM("random:smollm2-135m", max_num_seqs=2, max_model_len=64, num_blocks=16,
        attention_backend=backend, compilation_cache_dir=str(tmp_path))
  assert len(seen) == 2 and seen[0] == seen[1]      # None resolves to "xla" on the CPU
  assert seen[0].endswith("'xla')") and "num_layers=" in seen[0]


def test_source_digest_covers_the_traced_packages():
  digest = executable_store.source_digest()
  assert len(digest) == 64 and digest == executable_store.source_digest()
  assert executable_store._SOURCES == ("models", "engine", "pallas_kernels")


def test_a_damaged_file_is_a_miss(tmp_path):
  store = executable_store.ExecutableStore(str(tmp_path), None)
  key = ("prefill", (), 1)
  with open(os.path.join(tmp_path, store.digest(key) + ".exe"), "wb") as f:
    f.write(b"not a pickle")
  assert store.load(key) is None and store.num_loaded == 0


def test_a_store_on_gpus_only_without_a_mesh_and_with_a_cache(tmp_path):
  assert executable_store.open_store(None, None, None, "gpu") is None
  assert executable_store.open_store(str(tmp_path), None, object(), "gpu") is None
  assert executable_store.open_store(str(tmp_path), None, None, "cpu") is None
  store = executable_store.open_store(str(tmp_path), None, None, "gpu")
  assert store.directory == os.path.join(tmp_path, "executables")
