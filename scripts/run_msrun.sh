#!/usr/bin/env bash
# Data-parallel training with msrun (MindSpore >= 2.3; CPU, GPU or Ascend; no rank table needed).
#
#   bash scripts/run_msrun.sh [OPTIONS] TASK CONFIG [KEY=VALUE ...]
#
# TASK is pretrain | retrieval | caption | vqa (runs train_<TASK>.py). OPTIONS (`--name VALUE` or `--name=VALUE`)
# are passed to msrun; the defaults give one node with two workers:
#   --worker_num 2            workers in the whole job
#   --local_worker_num N      workers on this node (default: --worker_num)
#   --master_addr 127.0.0.1   scheduler address (the node whose address this is runs the scheduler)
#   --master_port 8118        scheduler port
#   --node_rank R             this node's index in a multi-node job (default: assigned by msrun)
#   --log_dir D               scheduler.log and worker_<rank>.log (default: <output>/msrun_log)
#   --join True|False         wait for the workers and exit non-zero when one fails (default: True)
#   --cluster_time_out S      seconds to wait for all workers to join (default: msrun's, 600)
# <output> is a `run.output_dir=...` override, else $OUTPUT_DIR, else ./outputs/<TASK>; it is passed to the trainer
# as run.output_dir (rank 0 writes there). For several nodes, run the same command on each with its --node_rank.
#
# Environment: DRY_RUN=1 prints the msrun command without running it. The repository's .venv/bin goes first on PATH
# when it exists (msrun starts the workers with the `python` found on PATH). GLOG_v defaults to 3. OPT_TRAIN_CMD
# replaces `python train_<TASK>.py` (it must start with python or be a .py file) and exists for the tests only.
set -euo pipefail

usage() {
  echo "usage: bash $0 [--worker_num N] [--local_worker_num N] [--master_addr A] [--master_port P] [--node_rank R]" \
    "[--log_dir D] [--join True|False] [--cluster_time_out S] TASK CONFIG [KEY=VALUE ...]" \
    "  (TASK: pretrain|retrieval|caption|vqa)" >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }
is_count() { [[ "$1" =~ ^[0-9]+$ ]] && (($1 > 0)); }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/launch_common.sh"
WORKER_NUM=2
LOCAL_WORKER_NUM=""
MASTER_ADDR=127.0.0.1
MASTER_PORT=8118
NODE_RANK=""
LOG_DIR=""
JOIN=True
CLUSTER_TIME_OUT=""
while (($# > 0)) && [[ "$1" == --* ]]; do
  if [[ "$1" == *=* ]]; then
    name="${1%%=*}"
    value="${1#*=}"
    shift
  else
    (($# >= 2)) || usage
    name="$1"
    value="$2"
    shift 2
  fi
  case "$name" in
    --worker_num) WORKER_NUM="$value" ;;
    --local_worker_num) LOCAL_WORKER_NUM="$value" ;;
    --master_addr) MASTER_ADDR="$value" ;;
    --master_port) MASTER_PORT="$value" ;;
    --node_rank) NODE_RANK="$value" ;;
    --log_dir) LOG_DIR="$value" ;;
    --join) JOIN="$value" ;;
    --cluster_time_out) CLUSTER_TIME_OUT="$value" ;;
    *) echo "error: unknown option $name" >&2 && usage ;;
  esac
done
(($# >= 2)) || usage
TASK="$1"
CONFIG="$(realpath -m -- "$2")"
shift 2
case "$TASK" in pretrain | retrieval | caption | vqa) ;; *) usage ;; esac
LOCAL_WORKER_NUM="${LOCAL_WORKER_NUM:-$WORKER_NUM}"
is_count "$WORKER_NUM" || die "--worker_num must be a positive integer, got '$WORKER_NUM'"
is_count "$LOCAL_WORKER_NUM" || die "--local_worker_num must be a positive integer, got '$LOCAL_WORKER_NUM'"
((LOCAL_WORKER_NUM <= WORKER_NUM)) || die "--local_worker_num $LOCAL_WORKER_NUM exceeds --worker_num $WORKER_NUM"
is_count "$MASTER_PORT" || die "--master_port must be a port number, got '$MASTER_PORT'"
[[ -z "$NODE_RANK" || "$NODE_RANK" =~ ^[0-9]+$ ]] || die "--node_rank must be 0, 1, ..., got '$NODE_RANK'"
[[ -z "$CLUSTER_TIME_OUT" ]] || is_count "$CLUSTER_TIME_OUT" ||
  die "--cluster_time_out must be a number of seconds, got '$CLUSTER_TIME_OUT'"
[[ "$JOIN" == True || "$JOIN" == False ]] || die "--join must be True or False, got '$JOIN'"
[[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG is not a file"

if [[ -d "$ROOT/.venv/bin" ]]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
export GLOG_v="${GLOG_v:-3}"
train_entry python

split_output "$@"
LOG_DIR="$(realpath -m -- "${LOG_DIR:-$OUTPUT/msrun_log}")"

CMD=(msrun "--worker_num=$WORKER_NUM" "--local_worker_num=$LOCAL_WORKER_NUM" "--master_addr=$MASTER_ADDR"
  "--master_port=$MASTER_PORT" "--log_dir=$LOG_DIR" "--join=$JOIN")
if [[ -n "$NODE_RANK" ]]; then CMD+=("--node_rank=$NODE_RANK"); fi
if [[ -n "$CLUSTER_TIME_OUT" ]]; then CMD+=("--cluster_time_out=$CLUSTER_TIME_OUT"); fi
CMD+=("${ENTRY[@]}" --config "$CONFIG" --set "run.output_dir=$OUTPUT" "${OVERRIDES[@]}")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q' "${CMD[0]}"
  printf ' %q' "${CMD[@]:1}"
  printf '\n'
  exit 0
fi
command -v msrun >/dev/null || die "msrun is not on PATH: install MindSpore >= 2.3 or activate its environment"
mkdir -p "$LOG_DIR"
echo "msrun: $WORKER_NUM workers ($LOCAL_WORKER_NUM here), logs in $LOG_DIR, outputs in $OUTPUT"
exec "${CMD[@]}"
