#!/usr/bin/env bash
# Create or reuse .venv in the repo root and install poseforge with what it needs.
# CPU by default (torch==2.13.0 is a CPU build on this machine kind). For GPUs, set
# POSEFORGE_TORCH to a CUDA build spec first, e.g.:
#   POSEFORGE_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" scripts/setup_env.sh
# Source it (`. scripts/setup_env.sh`: also activates .venv; a failure returns, never exits your
# shell, and your shell options stay as they were) or run it; idempotent and quick when nothing changed.
_pf_setup_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The whole setup runs in a subshell: its `set -e` and `exit` stay inside it when sourced.
_pf_setup() (
  set -euo pipefail
  repo="$_pf_setup_repo"
  venv="$repo/.venv"
  torch_spec="${POSEFORGE_TORCH:-torch==2.13.0}"
  python="${PYTHON:-python3}"

  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv" >&2
    "$python" -m venv "$venv"
  fi
  stamp="$venv/.poseforge-installed"
  want="$(cat "$repo/setup.cfg" "$repo/scripts/setup_env.sh" | sha256sum | cut -c1-16) $torch_spec"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
  fi
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  echo "[setup] installing torch ($torch_spec), poseforge and test tools into $venv" >&2
  # shellcheck disable=SC2086
  "${pip[@]}" install $torch_spec numpy 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -c "import torch" || { echo "[setup] torch failed to install" >&2; exit 1; }
  "${pip[@]}" install -e "$repo[test]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$venv/bin/python" -c "import trainer, shards, webdataset, mlflow, pycocotools, cv2" \
    || { echo "[setup] poseforge dependencies failed to install" >&2; exit 1; }
  if ! "$venv/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
    # DeepSpeed is an sdist: build it against the installed torch, without compiling its ops.
    DS_BUILD_OPS=0 "${pip[@]}" install --no-build-isolation "deepspeed>=0.14,<0.20" 2>&1 \
      | grep -v "is ignored: it is neither" >&2 || true
    DS_ACCELERATOR=cpu "$venv/bin/python" -c "import deepspeed" >/dev/null 2>&1 \
      || { echo "[setup] deepspeed failed to install" >&2; exit 1; }
  fi
  echo "$want" > "$stamp"
)

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then  # sourced
  _pf_setup && . "$_pf_setup_repo/.venv/bin/activate"
  return $?
fi
_pf_setup
