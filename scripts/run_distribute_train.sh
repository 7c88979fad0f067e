#!/usr/bin/env bash
# Data-parallel training on Ascend with a rank table: one process per card of this server, all started at once.
#
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE TASK CONFIG [KEY=VALUE ...]
#
# TASK is pretrain | retrieval | caption | vqa (runs train_<TASK>.py). Run the same command on every server of the
# table. This server is found by SERVER_ID (its index in server_list, or its server_id) or else by matching the
# addresses of `hostname -I` against the server_ids. RANK_SIZE and the global RANK_IDs come from the table; DEVICE_ID is
# the card's logical index on this server (its place among the server's cards in device-id order), as in the model
# zoo's launchers: right inside a container that maps the table's cards to 0..n-1, and on a bare server whose table
# lists all its cards. On a bare server with a table of some cards only (e.g. 4-7), export
# ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 first so that logical 0..3 are those cards.
# Every rank runs in the folder the script was started from; rank R writes its outputs and its log to <output>/rank_R/
# (train.log, appended), where <output> is a `run.output_dir=...` override, else $OUTPUT_DIR, else ./outputs/<TASK>.
# Checkpoints go to one folder for all ranks, <output>/checkpoints (or a `checkpoint.dir=...` override), so that
# checkpoint.resume=auto finds the same step on every rank; with several servers it must be on shared storage.
# Paths are made absolute first, including override values that name an existing relative path.
# The script waits for its ranks; when one fails it stops the others and exits 1. Ctrl-C, SIGTERM and SIGHUP (a closed
# terminal or ssh session) stop them all.
#
# Environment: CARD_GROUPS=none skips the Atlas 800 card-group check of the table (servers whose cards are all
# connected, e.g. Atlas 800T A2). DRY_RUN=1 prints each rank's directory, environment and command without starting anything.
# PYTHON chooses the interpreter (default: the repository's .venv, else python3). GLOG_v (default 3) and
# HCCL_CONNECT_TIMEOUT (default 600) are passed on. OPT_TRAIN_CMD replaces `$PYTHON train_<TASK>.py` and exists for
# the launcher tests only.
set -euo pipefail

usage() {
  echo "usage: bash $0 RANK_TABLE_FILE TASK CONFIG [KEY=VALUE ...]   (TASK: pretrain|retrieval|caption|vqa)" >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }

(($# >= 3)) || usage
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# every rank runs in the directory the job was launched from, so relative paths in configs and overrides resolve as
# typed (the original launchers cd'ed into per-rank folders and broke them); per-rank outputs go to <output>/rank_<id>
LAUNCH_DIR="$(pwd)"
RANK_TABLE_FILE="$(realpath -m -- "$1")"
TASK="$2"
CONFIG="$(realpath -m -- "$3")"
shift 3
case "$TASK" in pretrain | retrieval | caption | vqa) ;; *) usage ;; esac
[[ -f "$RANK_TABLE_FILE" ]] || die "RANK_TABLE_FILE=$RANK_TABLE_FILE is not a file (see scripts/make_rank_table.py)"
[[ -f "$CONFIG" ]] || die "CONFIG=$CONFIG is not a file"
source "$ROOT/scripts/launch_common.sh"
pick_python
train_entry

OUTPUT="${OUTPUT_DIR:-./outputs/$TASK}"
OVERRIDES=()
for item in "$@"; do
  key="${item%%=*}"
  value="${item#*=}"
  if [[ "$item" == run.output_dir=* ]]; then
    OUTPUT="$value"
  elif [[ "$item" == *=* && -n "$value" && "$value" != /* && -e "$value" ]]; then
    OVERRIDES+=("$key=$(realpath -- "$value")")
  else
    OVERRIDES+=("$item")
  fi
done
OUTPUT="$(realpath -m -- "$OUTPUT")"
# one checkpoint folder for the whole job (rank 0 writes it, every rank resumes from it): <output>/checkpoints unless
# checkpoint.dir is given; with several servers <output> (or checkpoint.dir) must be on storage they all share
CKPT_DIR="$OUTPUT/checkpoints"
for item in "${OVERRIDES[@]}"; do
  if [[ "$item" == checkpoint.dir=* ]]; then CKPT_DIR=""; fi
done
if [[ -n "$CKPT_DIR" ]]; then OVERRIDES=("checkpoint.dir=$CKPT_DIR" "${OVERRIDES[@]}"); fi

PLAN="$("$PYTHON" "$ROOT/scripts/make_rank_table.py" --local "$RANK_TABLE_FILE" --server_id "${SERVER_ID:-}" \
  --host_ips "$(hostname -I 2>/dev/null || true)" --card_groups "${CARD_GROUPS:-atlas800}")" || exit 2
RANKS=()
DEVICES=()
PHYSICAL=()
while read -r kind first second third; do
  case "$kind" in
    rank_size) RANK_SIZE="$first" ;;
    server) SERVER="$first ($second)" ;;
    rank)
      RANKS+=("$first")
      DEVICES+=("$second")
      PHYSICAL+=("$third")
      ;;
  esac
done <<<"$PLAN"

export GLOG_v="${GLOG_v:-3}"
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-600}"

# Each rank: its directory, environment and command (index i of RANKS/DEVICES).
rank_dir() { echo "$OUTPUT/rank_${RANKS[$1]}"; }
rank_env() {
  RANK_ENV=(DEVICE_ID="${DEVICES[$1]}" RANK_ID="${RANKS[$1]}" RANK_SIZE="$RANK_SIZE" RANK_TABLE_FILE="$RANK_TABLE_FILE")
}
rank_cmd() { RANK_CMD=("${ENTRY[@]}" --config "$CONFIG" --set "run.output_dir=$(rank_dir "$1")" "${OVERRIDES[@]}"); }

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "# server $SERVER: ${#RANKS[@]} of $RANK_SIZE ranks; nothing is started (DRY_RUN=1)"
  echo "export GLOG_v=$GLOG_v HCCL_CONNECT_TIMEOUT=$HCCL_CONNECT_TIMEOUT"
  for i in "${!RANKS[@]}"; do
    rank_env "$i"
    rank_cmd "$i"
    dir="$(rank_dir "$i")"
    echo "# rank ${RANKS[$i]} on device ${DEVICES[$i]} (card ${PHYSICAL[$i]} of the table)"
    printf 'cd %q &&' "$LAUNCH_DIR"
    printf ' %q' "${RANK_ENV[@]}" "${RANK_CMD[@]}"
    printf ' >> %q 2>&1\n' "$dir/train.log"
  done
  exit 0
fi

PIDS=()
stop_ranks() {
  local pid _
  for pid in "${PIDS[@]}"; do
    if [[ -n "$pid" ]]; then kill -TERM -- "-$pid" 2>/dev/null || true; fi
  done
  for _ in {1..20}; do
    local alive=0
    for pid in "${PIDS[@]}"; do
      if [[ -n "$pid" ]] && kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || return 0
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do
    if [[ -n "$pid" ]]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  done
}
trap 'echo "interrupted: stopping all ranks" >&2; stop_ranks; exit 130' INT TERM
# after a hang-up the terminal may be gone: stop the ranks first, and let a failed message not stop the script
trap 'stop_ranks; echo "hang-up: stopped all ranks" >&2 || true; exit 129' HUP

echo "server $SERVER: starting ${#RANKS[@]} of $RANK_SIZE ranks, outputs in $OUTPUT"
for i in "${!RANKS[@]}"; do
  rank_env "$i"
  rank_cmd "$i"
  dir="$(rank_dir "$i")"
  mkdir -p "$dir"
  # setsid: each rank leads its own process group, so stopping it also stops its children (e.g. data workers).
  (cd "$LAUNCH_DIR" && exec setsid env "${RANK_ENV[@]}" "${RANK_CMD[@]}") >>"$dir/train.log" 2>&1 &
  PIDS+=("$!")
  echo "rank ${RANKS[$i]} (device ${DEVICES[$i]}, card ${PHYSICAL[$i]} of the table, pid $!): log $dir/train.log"
done

running=${#PIDS[@]}
while ((running > 0)); do
  sleep 1
  for i in "${!PIDS[@]}"; do
    pid="${PIDS[$i]}"
    if [[ -z "$pid" ]] || kill -0 "$pid" 2>/dev/null; then continue; fi
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
      echo "error: rank ${RANKS[$i]} exited with status $status (log $(rank_dir "$i")/train.log);" \
        "stopping the other ranks" >&2
      stop_ranks
      exit 1
    fi
    PIDS[i]=""
    running=$((running - 1))
    echo "rank ${RANKS[$i]} finished"
  done
done
echo "all ${#RANKS[@]} ranks of server $SERVER finished; outputs in $OUTPUT"
