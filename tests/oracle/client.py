"""Runs tests/oracle/hf_oracle.py under the oracle Python from the 3.12 tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tests", "oracle", "hf_oracle.py")
SETUP_HINT = "bash scripts/setup_oracle.sh"


def oracle_python() -> str:
  """The oracle interpreter; fails (never skips) when it is missing."""
  py = os.environ.get("PAGEDJAX_ORACLE_PYTHON") or os.path.join(REPO, ".venv-oracle", "bin", "python")
  if not os.path.isfile(py):
    raise RuntimeError(f"oracle Python {py} not found; create it with: {SETUP_HINT}")
  return py


def run_oracle(command: str, spec: dict, workdir: str, timeout: float = 1200.0
               ) -> tuple[dict, dict[str, np.ndarray]]:
  """Runs one oracle subcommand; returns (json result, logits arrays)."""
  spec_path = os.path.join(workdir, f"{command}_in.json")
  prefix = os.path.join(workdir, f"{command}_out")
  with open(spec_path, "w", encoding="utf-8") as f:
    json.dump(spec, f, ensure_ascii=False)
  env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
  proc = subprocess.run([oracle_python(), SCRIPT, command, spec_path, prefix],
                        capture_output=True, text=True, timeout=timeout, env=env)
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f"oracle {command} failed (rc={proc.returncode}); is it set up? "
                       f"({SETUP_HINT})\n{proc.stderr[-2000:]}")
  with open(prefix + ".json", encoding="utf-8") as f:
    result = json.load(f)
  with np.load(prefix + ".npz") as z:
    arrays = {k: z[k] for k in z.files}
  return result, arrays
