#!/usr/bin/env bash
# Set up the Python environment for the study, once; sourced by runall.sh and
# runtests.sh. Uses the active virtualenv/conda env when it already has the
# package installed at the locked versions, otherwise creates ./.venv.
#
#   source scripts/bootstrap.sh              # sets $PY (package + test extras)
#   scripts/bootstrap.sh --relock            # rewrite requirements.lock from .venv
set -euo pipefail

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_extras="test"   # one environment for running and testing: no re-install when switching

_want_hash() {  # what the installed environment must match
  cat "$_root/pyproject.toml" "$_root/requirements.lock" | sha256sum | cut -c1-16
  echo "extras=$_extras"
}

_find_python() {  # the newest supported Python on PATH (3.11, 3.12 or 3.13)
  for candidate in python3.13 python3.12 python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11, 3.12 or 3.13 is needed (python3.13/3.12/3.11 or python3 on PATH); conda users: conda env create -f environment.yml" >&2
  return 1
}

_install() {  # $1 = python of the environment to install into
  local py="$1" spec="$_root"
  [ -n "$_extras" ] && spec="$_root[$_extras]"
  echo "bootstrap: installing the study's packages into $("$py" -c 'import sys; print(sys.prefix)') (locked versions; a few minutes the first time)"
  "$py" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$py" -m pip install --quiet -c "$_root/requirements.lock" -e "$spec" 2>&1 \
    | grep -v -E "^WARNING: Location '.*' is ignored" || true
  "$py" -c 'import helpers, torch, diffusers, papermill' \
    || { echo "error: installation failed (see the pip messages above)" >&2; return 1; }
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = "--relock" ]; then
  "$_root/.venv/bin/python" -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/' \
    > "$_root/requirements.lock.new"
  mv "$_root/requirements.lock.new" "$_root/requirements.lock"
  echo "requirements.lock rewritten"; exit 0
fi

_active="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [ -n "$_active" ] && [ "$_active" != "$_root/.venv" ] && [ -x "$_active/bin/python" ]; then
  PY="$_active/bin/python"
  _stamp="$_active/.beware-study-installed"
else
  if [ ! -x "$_root/.venv/bin/python" ]; then
    _base="$(_find_python)"
    echo "bootstrap: creating $_root/.venv with $($_base --version)"
    "$_base" -m venv "$_root/.venv"
  fi
  PY="$_root/.venv/bin/python"
  _stamp="$_root/.venv/.beware-study-installed"
fi

if [ "$(cat "$_stamp" 2>/dev/null)" != "$(_want_hash)" ]; then
  _install "$PY"
  _want_hash > "$_stamp"
fi
export PY
