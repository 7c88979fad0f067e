#!/usr/bin/env bash
# Sourced by run_tests.sh and run_demo.sh: creates .venv on first use, (re)installs the requirements when they change,
# activates the venv and sets quiet MindSpore logs. Needs only a python3 on PATH (tested with 3.11).
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want="$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements into $VENV (first run takes about a minute)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -r "$REPO_ROOT/requirements.txt" -r "$REPO_ROOT/requirements-dev.txt"
  echo "$want" > "$stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export GLOG_v="${GLOG_v:-3}"
# No global MS_COMPILER_CACHE_ENABLE: MindSpore's cache ignores parameter shapes, so a graph compiled for another
# config can be reused wrongly. Entry points enable it per resolved config instead (run.compile_cache).
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
