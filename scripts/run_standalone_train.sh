#!/usr/bin/env bash
# Training in one process (any device), logging to the terminal and to <output>/train.log (appended).
#
#   bash scripts/run_standalone_train.sh TASK CONFIG [KEY=VALUE ...]
#
# TASK is pretrain | retrieval | caption | vqa (runs train_<TASK>.py). <output> is a `run.output_dir=...` override,
# else $OUTPUT_DIR, else ./outputs/<TASK>; it is passed to the trainer as run.output_dir. On Ascend or GPU choose the
# card with DEVICE_ID (default 0). The job is a single rank even if RANK_TABLE_FILE or msrun variables are set.
#
# Environment: DRY_RUN=1 prints the command without running it. PYTHON chooses the interpreter (default: the
# repository's .venv, else python3). GLOG_v defaults to 3. OPT_TRAIN_CMD replaces `$PYTHON train_<TASK>.py` and
# exists for the tests only.
set -euo pipefail

usage() {
  echo "usage: bash $0 TASK CONFIG [KEY=VALUE ...]   (TASK: pretrain|retrieval|caption|vqa)" >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }

(($# >= 2)) || usage
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASK="$1"
CONFIG="$(realpath -m -- "$2")"
shift 2
case "$TASK" in pretrain | retrieval | caption | vqa) ;; *) usage ;; esac
[[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG is not a file"
source "$ROOT/scripts/launch_common.sh"
pick_python
train_entry

split_output "$@"

export GLOG_v="${GLOG_v:-3}"
export RANK_SIZE=1 RANK_ID=0
unset MS_ROLE MS_WORKER_NUM
CMD=("${ENTRY[@]}" --config "$CONFIG" --set "run.output_dir=$OUTPUT" "${OVERRIDES[@]}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q' "${CMD[0]}"
  printf ' %q' "${CMD[@]:1}"
  printf ' 2>&1 | tee -a %q\n' "$OUTPUT/train.log"
  exit 0
fi
mkdir -p "$OUTPUT"
echo "training $TASK; log $OUTPUT/train.log"
"${CMD[@]}" 2>&1 | tee -a "$OUTPUT/train.log"
