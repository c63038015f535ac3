"""Fixtures of the serving tests: a real `pagedjax serve` subprocess and an
in-process reference engine, both on SmolLM2 with the same small config.

NOTE: the config keeps the number of compiled shape buckets small (the CPU
compiles each one in seconds): max_model_len 256 (one block-table width),
max_batch_tokens 16, max_num_seqs 4.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.client import PagedJaxClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_KWARGS = dict(max_num_seqs=4, max_batch_tokens=16, max_model_len=256)
ENGINE_FLAGS = ["--max-num-seqs", "4", "--max-batch-tokens", "16", "--max-model-len", "256"]
MAX_WAITING = 32
STARTUP_TIMEOUT_S = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def subprocess_env(tmp_root: str) -> dict[str, str]:
  """Env for pagedjax subprocesses: CPU JAX and a compilation cache they share.

  NOTE: scripts/test.sh sets JAX_COMPILATION_CACHE_DIR for the whole suite;
  without it the subprocesses of this session share a temp cache.
  """
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tmp_root, "jax-cache"))
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return env


def pagedjax_cmd(*args: str) -> list[str]:
  return [sys.executable, "-m", "serving.cli", *args]


class ServerProcess:
  """A `pagedjax serve` subprocess on loopback, with its client and metrics."""

  def __init__(self, tmp_root: str, *extra: str):
    self.port, self.metrics_port = free_port(), free_port()
    self.log_path = os.path.join(tmp_root, f"serve-{self.port}.log")
    self._log = open(self.log_path, "w")
    self.proc = subprocess.Popen(
        pagedjax_cmd("serve", "--host", "127.0.0.1", "--port", str(self.port),
                     "--metrics-port", str(self.metrics_port), *ENGINE_FLAGS, *extra),
        cwd=REPO, env=subprocess_env(tmp_root), stdout=self._log, stderr=subprocess.STDOUT)
    self.client = PagedJaxClient(f"127.0.0.1:{self.port}")

  @property
  def target(self) -> str:
    return f"127.0.0.1:{self.port}"

  def wait_ready(self) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
      try:
        if self.client.health(timeout=1.0) == "SERVING":
          return
      except Exception:
        time.sleep(0.5)
    raise TimeoutError(f"server not SERVING after {STARTUP_TIMEOUT_S}s:\n{self.log()}")

  def log(self) -> str:
    with open(self.log_path) as f:
      return f.read()[-4000:]

  def metrics(self) -> dict[str, float]:
    """Every sample of /metrics by name (labels folded into the name)."""
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
      for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out

  def wait_metric(self, name: str, value: float, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
      m = self.metrics()
      if m.get(name) == value or time.monotonic() > deadline:
        return m
      time.sleep(0.1)

  def stop(self) -> None:
    self.client.close()
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()


@pytest.fixture(scope="session")
def serving_tmp(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def reference_llm(smollm2_model):
  """An in-process LLM with the servers' engine config (parity reference)."""
  from engine import LLM
  return LLM(loaded_model=smollm2_model, **ENGINE_KWARGS)
