#!/usr/bin/env bash
# Export a trained checkpoint for serving (MindIR by default).
#
#   bash scripts/run_export.sh TASK CKPT FILE_NAME [BATCH_SIZE] [FORMAT]
#
# Runs `export.py --task TASK --ckpt_file CKPT --file_name FILE_NAME --file_format FORMAT --batch_size BATCH_SIZE`.
# BATCH_SIZE defaults to 1, FORMAT to MINDIR (AIR needs Ascend; ONNX works for static shapes only).
#
# Environment: DRY_RUN=1 prints the command without running it. PYTHON chooses the interpreter (default: the
# repository's .venv, else python3). GLOG_v defaults to 3.
set -euo pipefail

usage() {
  echo "usage: bash $0 TASK CKPT FILE_NAME [BATCH_SIZE] [MINDIR|AIR|ONNX]" >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }

(($# >= 3 && $# <= 5)) || usage
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASK="$1"
CKPT="$(realpath -m -- "$2")"
FILE_NAME="$(realpath -m -- "$3")"
BATCH_SIZE="${4:-1}"
FORMAT="${5:-MINDIR}"
[[ -n "$TASK" && "$TASK" != -* ]] || usage
[[ -e "$CKPT" ]] || die "CKPT=$CKPT does not exist"
[[ "$BATCH_SIZE" =~ ^[0-9]+$ ]] || die "BATCH_SIZE must be a whole number, got '$BATCH_SIZE'"
case "$FORMAT" in MINDIR | AIR | ONNX) ;; *) die "FORMAT must be MINDIR, AIR or ONNX, got '$FORMAT'" ;; esac
source "$ROOT/scripts/launch_common.sh"
pick_python

export GLOG_v="${GLOG_v:-3}"
CMD=("$PYTHON" "$ROOT/export.py" --task "$TASK" --ckpt_file "$CKPT" --file_name "$FILE_NAME" --file_format "$FORMAT"
  --batch_size "$BATCH_SIZE")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q' "${CMD[0]}"
  printf ' %q' "${CMD[@]:1}"
  printf '\n'
  exit 0
fi
exec "${CMD[@]}"
