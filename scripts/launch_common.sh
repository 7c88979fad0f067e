#!/usr/bin/env bash
# Sourced by the launchers: the pieces they share. Needs ROOT (the repository) and, for train_entry, TASK.

# PYTHON: as given, else the repository's .venv, else python3.
pick_python() {
  if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
  fi
}

# ENTRY: the trainer command, `$1 train_<TASK>.py` ($1 defaults to $PYTHON); OPT_TRAIN_CMD replaces it (tests only).
train_entry() {
  if [[ -n "${OPT_TRAIN_CMD:-}" ]]; then
    read -r -a ENTRY <<<"$OPT_TRAIN_CMD"
  else
    ENTRY=("${1:-$PYTHON}" "$ROOT/train_$TASK.py")
  fi
}

# OUTPUT (absolute) and OVERRIDES from KEY=VALUE arguments: a run.output_dir=... override becomes OUTPUT, else
# $OUTPUT_DIR, else ./outputs/<TASK>; the other items are kept in order.
split_output() {
  OUTPUT="${OUTPUT_DIR:-./outputs/$TASK}"
  OVERRIDES=()
  local item
  for item in "$@"; do
    if [[ "$item" == run.output_dir=* ]]; then OUTPUT="${item#*=}"; else OVERRIDES+=("$item"); fi
  done
  OUTPUT="$(realpath -m -- "$OUTPUT")"
}
