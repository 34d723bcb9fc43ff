#!/usr/bin/env bash
# Run the study: ./runall.sh [DATASET] [--data DIR] [--profile smoke|cpu|reference|reference_noaug|gpu|paper]
#                            [--from NN] [--only NN] [--to NN] [--force] [--results DIR]
#        ./runall.sh compare        # cross-dataset comparison of what exists
#        ./runall.sh lab            # open the notebooks in JupyterLab (installed on first use)
# Sets up .venv on first use (see scripts/bootstrap.sh). See README.md.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
if [ "${1:-}" = "lab" ]; then
  shift
  "$PY" -c 'import jupyterlab' 2>/dev/null || {
    echo "bootstrap: installing JupyterLab into the study's environment (once)"
    "$PY" -m pip install --quiet -c requirements.lock -e ".[test,lab]" 2>&1 | grep -v -E "^WARNING: Location '.*' is ignored" || true
  }
  "$PY" -m helpers.pipeline --register-kernel
  exec "$PY" -m jupyterlab --ServerApp.root_dir="$PWD" --LabApp.default_url=/lab/tree/notebooks "$@"
fi
exec "$PY" -m helpers.pipeline "$@"
