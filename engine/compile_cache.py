"""The persistent XLA compilation cache: on by default for every engine.

A second process with the same shapes loads its compiled steps from disk
instead of compiling them. Where it lives, in order: `EngineConfig.
compilation_cache_dir`, else `$PAGEDJAX_COMPILATION_CACHE_DIR`, else
`$XDG_CACHE_HOME/pagedjax/xla` (`~/.cache/pagedjax/xla`); "" or "off" turns it
off. A cache directory JAX already has (`$JAX_COMPILATION_CACHE_DIR`,
`jax.config.update("jax_compilation_cache_dir", ...)`, an earlier engine) wins.

NOTE: JAX's cache is process-global configuration. `configure` runs at engine
construction, before the engine compiles anything; it only ever turns the
cache on (never moves or closes one in use), so calling it again, from any
engine, changes nothing.
"""
from __future__ import annotations

import os

import jax
from absl import logging

ENV = "PAGEDJAX_COMPILATION_CACHE_DIR"
_OFF = ("", "off", "none", "false", "0")
# JAX option -> value: cache every step, however fast it compiled or small it is
# (JAX's defaults skip compiles under 1 s, e.g. most CPU ones). Left alone when
# set in the environment.
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pagedjax", "xla")


def requested_dir(setting: str | None) -> str | None:
  """The directory an engine asks for (None: off); `setting` is its config field."""
  value = setting if setting is not None else os.environ.get(ENV)
  if value is None:
    return default_dir()
  return None if value.strip().lower() in _OFF else os.path.abspath(os.path.expanduser(value))


def configure(setting: str | None) -> str | None:
  """Turns the persistent cache on for this process unless it is on already or asked
  off; returns the directory in use (None: none)."""
  current = jax.config.jax_compilation_cache_dir
  wanted = requested_dir(setting)
  if current:
    if (setting is not None or ENV in os.environ) and wanted != os.path.abspath(current):
      logging.warning("compilation cache: this process already uses %s (JAX's setting is "
                      "process-wide); not %s", current, wanted or "off")
    _cache_small_entries()
    return current
  if wanted is None:
    return None
  os.makedirs(wanted, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", wanted)
  _cache_small_entries()
  logging.info("compilation cache: %s", wanted)
  return wanted


def _cache_small_entries() -> None:
  for name, value in _THRESHOLDS.items():
    if name.upper() not in os.environ:
      jax.config.update(name, value)
