#!/usr/bin/env bash
# The whole test suite on CPU: sets up both venvs if needed, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_oracle.sh
# Compiled XLA executables are reused across engines and runs (many tests build
# engines with the same shapes).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}"
export PAGEDJAX_ORACLE_PYTHON="${PAGEDJAX_ORACLE_PYTHON:-$PWD/.venv-oracle/bin/python}"
exec .venv/bin/python -m pytest -q "$@"
