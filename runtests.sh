#!/usr/bin/env bash
# Set up the environment (with test extras), lint, and run the test suite:
#   ./runtests.sh [pytest arguments]     e.g. ./runtests.sh -k correlation
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
"$PY" -m ruff check --quiet src tests benchmarks || { echo "ruff: fix the findings above (ruff check --fix fixes many)" >&2; exit 1; }
exec "$PY" -m pytest "$@"
