#!/usr/bin/env bash
# The whole test suite: create/reuse .venv, install what is needed, run pytest.
# Extra arguments go to pytest (e.g. `bash tests/run.sh tests/shards -x`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
# System packages for the end-to-end tests: a local SLURM and Chromium (for the MLflow UI
# screenshot). Installed once when missing and we are root; otherwise those tests skip, saying why.
missing=()
command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || missing+=(munge)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[tests] installing ${missing[*]} with apt-get" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >/tmp/poseforge-apt.log 2>&1 || echo "[tests] apt-get failed (see /tmp/poseforge-apt.log); those tests will skip" >&2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
