#!/usr/bin/env bash
# Evaluation of a checkpoint in one process, logging to the terminal and to <output>/eval.log (appended).
#
#   bash scripts/run_eval.sh TASK CONFIG CKPT [KEY=VALUE ...]
#
# Runs `eval.py --task TASK --config CONFIG --ckpt CKPT --set run.output_dir=<output> [KEY=VALUE ...]`. <output> is a
# `run.output_dir=...` override, else $OUTPUT_DIR, else ./outputs/<TASK>. On Ascend or GPU choose the card with
# DEVICE_ID (default 0).
#
# Environment: DRY_RUN=1 prints the command without running it. PYTHON chooses the interpreter (default: the
# repository's .venv, else python3). GLOG_v defaults to 3.
set -euo pipefail

usage() {
  echo "usage: bash $0 TASK CONFIG CKPT [KEY=VALUE ...]" >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }

(($# >= 3)) || usage
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASK="$1"
CONFIG="$(realpath -m -- "$2")"
CKPT="$(realpath -m -- "$3")"
shift 3
[[ -n "$TASK" && "$TASK" != -* ]] || usage
[[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG is not a file"
[[ -e "$CKPT" ]] || die "CKPT=$CKPT does not exist"
source "$ROOT/scripts/launch_common.sh"
pick_python

split_output "$@"

export GLOG_v="${GLOG_v:-3}"
export RANK_SIZE=1 RANK_ID=0
unset MS_ROLE MS_WORKER_NUM
CMD=("$PYTHON" "$ROOT/eval.py" --task "$TASK" --config "$CONFIG" --ckpt "$CKPT" --set "run.output_dir=$OUTPUT"
  "${OVERRIDES[@]}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q' "${CMD[0]}"
  printf ' %q' "${CMD[@]:1}"
  printf ' 2>&1 | tee -a %q\n' "$OUTPUT/eval.log"
  exit 0
fi
mkdir -p "$OUTPUT"
echo "evaluating $TASK with $CKPT; log $OUTPUT/eval.log"
"${CMD[@]}" 2>&1 | tee -a "$OUTPUT/eval.log"
