#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs everything the demo and the
# tests need. Sourced by demo.sh and test.sh; sets PY to the environment's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLMARCH_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip
# Torch first, pinned: a bare `torch` requirement may pull a multi-GB CUDA build on a CPU machine.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check "torch==${LLMARCH_TORCH_VERSION:-2.13.0}"
fi
"$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
export PY
