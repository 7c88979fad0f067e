#!/usr/bin/env bash
# The test command: bash scripts/run_tests.sh [--fast] [pytest arguments...]
# Creates .venv if missing and installs requirements.txt and requirements-dev.txt, then
#   1. lints: `ruff check .` (rules in ruff.toml); any finding fails the run before a test starts;
#   2. runs pytest: the whole suite (unit, integration, distributed), or with --fast only the tests not marked `slow`
#      or `distributed` (pytest -m "not slow and not distributed": unit tests and in-process CLI tests, under 3 minutes
#      on 2 CPU cores). Mark a test `slow` when it starts a process (subprocess, shell script) or takes more than
#      about 10 s, `distributed` when it starts msrun workers (markers in pytest.ini).
# Every run records each test's duration (setup + call + teardown) in outputs/test-report.xml (JUnit XML; outputs/ is
# gitignored); .ci/run prints the 15 slowest from it. Extra arguments go to pytest, e.g.
# `bash scripts/run_tests.sh tests/unit -k config` or `bash scripts/run_tests.sh --fast -x`. The exit code is
# pytest's: 0 only when tests ran and passed (5, no test collected, fails like any other non-zero code).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"
args=()
marks=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then
    marks=(-m "not slow and not distributed")
  else
    args+=("$arg")
  fi
done
echo "[lint] ruff check ."
ruff check .
exec python -m pytest --junitxml=outputs/test-report.xml "${marks[@]}" "${args[@]}"
