#!/usr/bin/env bash
# The whole test suite: create/reuse .venv, install what is needed, run pytest.
# Extra arguments go to pytest (e.g. `bash tests/run.sh tests/shards -x`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
