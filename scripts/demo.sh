#!/usr/bin/env bash
# The main job: train a tiny model on the embedded corpus, generate, LoRA-tune, save, reload.
# Extra arguments go to `llmarch demo` (e.g. --preset hybrid-tiny --steps 200).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$PY" -m hf_llmarch.cli demo "$@"
