"""The tensor-parallel scenario report, computed once per session in a 4-device subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tp_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))


@pytest.fixture(scope="session")
def report() -> dict:
  """tp_worker.py's JSON report. NOTE: a subprocess, because JAX reads
  --xla_force_host_platform_device_count only when it starts, and other test
  modules of this pytest process start it first with one device."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, WORKER], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)
