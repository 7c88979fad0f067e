#!/usr/bin/env bash
# The test command: bash scripts/run_tests.sh [pytest arguments...]
# Creates .venv if missing, installs requirements.txt and requirements-dev.txt, runs the whole suite (unit,
# integration, distributed). Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh tests/unit -k config`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"
exec python -m pytest "$@"
