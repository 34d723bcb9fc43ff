#!/usr/bin/env bash
# Set up the environment (with test extras) and run the test suite:
#   ./runtests.sh [pytest arguments]     e.g. ./runtests.sh -k correlation
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec "$PY" -m pytest "$@"
