#!/usr/bin/env bash
# The whole test suite (CPU). Extra arguments go to pytest (e.g. -k retention).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$PY" -m pytest -q --timeout 900 -p no:cacheprovider "$@"
