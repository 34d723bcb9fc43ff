#!/usr/bin/env bash
# Run the study: ./runall.sh [DATASET] [--data DIR] [--profile smoke|cpu|gpu|paper]
#                            [--from NN] [--only NN] [--force] [--results DIR]
#        ./runall.sh compare        # cross-dataset comparison of what exists
# Sets up .venv on first use (see scripts/bootstrap.sh). See README.md.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec "$PY" -m helpers.pipeline "$@"
