#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs everything the demo and the
# tests need. Sourced by demo.sh and test.sh; sets PY to the environment's python.
#   LLMARCH_VENV=DIR              use another environment (default .venv)
#   LLMARCH_TRANSFORMERS=VERSION  install that transformers (e.g. 5.17.0); default: the newest
#                                 release pyproject.toml allows
#   LLMARCH_TORCH_VERSION=VERSION the CPU torch to install first (default 2.13.0)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMARCH_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# No wheel cache: CI machines can be short of disk, and a cached copy of torch doubles its footprint.
PIP=(quiet "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir)
# pip and the build backend chatter even with -q (e.g. setuptools' notes on editable installs):
# their output is shown only when the step fails.
quiet() {
  local log
  log="$(mktemp)"
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}
"${PIP[@]}" --upgrade pip
# Torch first, pinned: a bare `torch` requirement may pull a multi-GB CUDA build on a CPU machine.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "${PIP[@]}" "torch==${LLMARCH_TORCH_VERSION:-2.13.0}"
fi
# An explicit pin, or the newest allowed release even when an older one is already installed.
TRANSFORMERS_REQ=("transformers")
if [ -n "${LLMARCH_TRANSFORMERS:-}" ]; then
  TRANSFORMERS_REQ=("transformers==$LLMARCH_TRANSFORMERS")
fi
"${PIP[@]}" --upgrade --upgrade-strategy only-if-needed -e "$ROOT[dev]" "${TRANSFORMERS_REQ[@]}"
export PY
