"""Compiled steps kept on disk whole, so that a second start skips tracing them too.

JAX's persistent compilation cache (engine/compile_cache.py) saves XLA's work,
but finding an entry there needs the step traced and lowered first, and for the
default serving configuration that is all a second start spends: 9.6 of its
9.7 s of warm-up on an H200 (2026-12-02, docs/benchmarks.md). This store keeps
each compiled step serialized (`jax.experimental.serialize_executable`) under
`<compilation cache dir>/executables/`, keyed by everything that decides what
the step computes, and loads it without tracing.

NOTE: the key is a digest of the step's key and full abstract signature (shapes,
dtypes, shardings of every argument), what the step closes over (the model
config and the attention backend, as make_steps memoizes), the compiler options, the JAX/jaxlib
versions, the device kind and platform version, JAX's numerics flags, and the
text of every source file the traced code can come from (models/, engine/,
pallas_kernels/, the tuning tables): a change to any of them is a miss, never a
stale executable. Steps over a tensor-parallel mesh are not stored.

NOTE: GPUs only. On the CPU (jaxlib 0.11.2) a deserialized executable may fail
when it runs, in another process or even the same one ("NOT_FOUND: Function
wrapped_iota not found"). On an H200 a second 8B start loaded all 26 steps and
served with them, and a second 1B process ran loaded steps with the dense
reference's tokens (2026-12-02, docs/benchmarks.md).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import pickle

import jax
import jaxlib
from absl import logging
from jax.experimental import serialize_executable

_REPO = pathlib.Path(__file__).resolve().parent.parent
_SOURCES = ("models", "engine", "pallas_kernels")
_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion")


@functools.cache
def source_digest() -> str:
  """sha256 over the traced code's source files (and the tuning tables), path and text."""
  h = hashlib.sha256()
  for package in _SOURCES:
    for path in sorted((_REPO / package).rglob("*")):
      if path.suffix in (".py", ".json") and path.is_file():
        h.update(str(path.relative_to(_REPO)).encode())
        h.update(path.read_bytes())
  return h.hexdigest()


def _environment(compiler_options: dict | None, steps: str) -> str:
  device = jax.devices()[0]
  return json.dumps({
      "steps": steps,
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "device": device.device_kind, "platform": device.client.platform_version,
      "flags": {name: str(getattr(jax.config, name)) for name in _FLAGS},
      "options": {k: str(v) for k, v in sorted((compiler_options or {}).items())},
      "sources": source_digest()}, sort_keys=True)


class ExecutableStore:
  """Serialized compiled steps in one directory, one file per digest."""

  def __init__(self, directory: str, compiler_options: dict | None, steps: str = ""):
    """`steps` names what the stored steps close over besides their arguments
    (the runner's model config and attention backend: engine/steps.make_steps)."""
    self.directory = directory
    self._environment = _environment(compiler_options, steps)
    self.num_loaded = 0
    self.num_saved = 0

  def digest(self, key: tuple) -> str:
    """The file name of `key` (a runner's shared key: step key + abstract signature)."""
    return hashlib.sha256((self._environment + repr(key)).encode()).hexdigest()

  def _path(self, key: tuple) -> str:
    return os.path.join(self.directory, self.digest(key) + ".exe")

  def load(self, key: tuple) -> jax.stages.Compiled | None:
    """The stored executable of `key`, or None (never stored, or unreadable)."""
    path = self._path(key)
    if not os.path.exists(path):
      return None
    try:
      with open(path, "rb") as f:
        payload, in_tree, out_tree = pickle.load(f)
      executable = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception as e:      # NOTE: a damaged or foreign file is a miss, not a failure
      logging.warning("executable store: could not load %s (%s); compiling", path, e)
      return None
    self.num_loaded += 1
    return executable

  def save(self, key: tuple, executable: jax.stages.Compiled) -> None:
    """Writes `executable` under `key` (atomically: readers never see half a file)."""
    path = self._path(key)
    if os.path.exists(path):
      return
    try:
      blob = pickle.dumps(serialize_executable.serialize(executable))
      os.makedirs(self.directory, exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "wb") as f:
        f.write(blob)
      os.replace(tmp, path)
      self.num_saved += 1
    except Exception as e:      # NOTE: a full disk costs the next start time, not this one
      logging.warning("executable store: could not save %s (%s)", path, e)


def open_store(cache_dir: str | None, compiler_options: dict | None, mesh,
               platform: str, steps: str = "") -> ExecutableStore | None:
  """The store beside the compilation cache, or None (cache off, a mesh, not a GPU)."""
  if cache_dir is None or mesh is not None or platform not in ("gpu", "cuda"):
    return None
  return ExecutableStore(os.path.join(cache_dir, "executables"), compiler_options, steps)
