#!/usr/bin/env bash
# The main job on the built-in demo data: bash scripts/run_demo.sh [--full | --quick]
# Generates the demo dataset and its vocabulary, trains the image tokenizer (VQ-VAE) and encodes every image into
# codes, builds the MindRecords, pre-trains the small model (image decoding included), evaluates zero-shot retrieval,
# fine-tunes and evaluates retrieval, captioning, VQA and text-to-image, exports the captioner as MindIR and evaluates
# the exported graphs, and writes outputs/demo/report.md (python -m demo.report) and, except with --quick, the
# measured figures to docs/results/demo.md (--full: docs/results/demo_full.md; DEMO_RESULTS= to skip).
# default: every stage on short schedules (config/*/demo_short.yaml), about 20 minutes on 2 CPU cores.
# --full:  the long schedules (config/*/demo.yaml, two text-to-image cycles) behind the README's quality figures.
# --quick: a tiny version used by the tests (few samples, a few steps, zero-shot retrieval only, then the report).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"

MODE=short
for arg in "$@"; do
  case "$arg" in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "usage: bash scripts/run_demo.sh [--full | --quick]" >&2; exit 2 ;;
  esac
done

DATA="${DEMO_DATA:-data/demo}"
OUT="${DEMO_OUT:-outputs/demo}"
SIZES=(--n_train 1000 --n_val 100 --n_test 100)
VQ=()
PRETRAIN=()
EVAL=()
if [ "$MODE" = full ]; then
  SIZES=(--n_train 2000 --n_val 100 --n_test 100)
  RUN=demo        # config/<task>/demo.yaml
else
  RUN=demo_short  # config/<task>/demo_short.yaml
fi
if [ "$MODE" = quick ]; then
  SIZES=(--n_train 96 --n_val 16 --n_test 16)
  VQ=(train.steps=10 train.eval_every=10 checkpoint.every=10 optim.warmup_steps=2 vq.grid_images=4)
  PRETRAIN=(train.steps=12 checkpoint.every=12 pretrain.tasks.mlm=1 pretrain.tasks.itc=1 pretrain.tasks.itm=1
            pretrain.tasks.mvm=0 pretrain.tasks.mam=0 pretrain.tasks.td=0 pretrain.tasks.id=1)
  EVAL=(--k 4)
fi
COMMON=(data.train="$DATA/mindrecord/train.mindrecord" data.val="$DATA/mindrecord/val.mindrecord"
        data.test="$DATA/mindrecord/test.mindrecord" data.vocab="$DATA/vocab.txt")
mkdir -p "$OUT"
rm -f "$OUT/stages.jsonl"
start=$(date +%s)
last=$start
current=""
# stage NAME: closes the previous stage (its seconds go to $OUT/stages.jsonl, which the report shows) and starts NAME
stage() {
  local now
  now=$(date +%s)
  if [ -n "$current" ]; then
    printf '{"stage": "%s", "seconds": %d}\n' "$current" $(( now - last )) >> "$OUT/stages.jsonl"
  fi
  current="$1"
  last=$now
  echo; echo "=== [$(( now - start ))s] $*"
}
newest() { ls -d "$1"/step_* | tail -n 1; }
if [ "$MODE" = quick ]; then LAST=6; else LAST=10; fi
echo "run_demo.sh: mode $MODE (configs config/*/$RUN.yaml), data $DATA, outputs $OUT"

stage "1/$LAST demo data -> $DATA"
python -m demo.data --out "$DATA" "${SIZES[@]}" --audio tones
python -m src.data.vocab --manifest "$DATA/train.jsonl" "$DATA/train_vqa.jsonl" --out "$DATA/vocab.txt"

stage "2/$LAST image tokenizer: VQ-VAE training, image codes -> $OUT/vq, $DATA/tokens"
python scripts/train_image_tokenizer.py --config "config/vq/$RUN.yaml" --set run.output_dir="$OUT/vq" \
  data.train="$DATA/train.jsonl" data.val="$DATA/val.jsonl" "${VQ[@]}"
VQ_CKPT="$(newest "$OUT/vq/checkpoints")"
for split in train val test; do
  python -m src.inference.image_tokens --vq "$VQ_CKPT" --manifest "$DATA/$split.jsonl" \
    --out "$DATA/tokens/$split.jsonl"
done

stage "3/$LAST MindRecords (captions with image codes; VQA) -> $DATA/mindrecord"
for split in train val test; do
  python -m src.data.build_mindrecord --manifest "$DATA/tokens/$split.jsonl" \
    --out "$DATA/mindrecord/$split.mindrecord" --vocab "$DATA/vocab.txt" --strict
  python -m src.data.build_mindrecord --manifest "$DATA/${split}_vqa.jsonl" \
    --out "$DATA/mindrecord/${split}_vqa.mindrecord" --vocab "$DATA/vocab.txt" --strict
done

stage "4/$LAST pre-training the small model -> $OUT/pretrain"
python train_pretrain.py --config "config/pretrain/$RUN.yaml" --set run.output_dir="$OUT/pretrain" "${COMMON[@]}" \
  "${PRETRAIN[@]}"
PRETRAINED="$(newest "$OUT/pretrain/checkpoints")"

stage "5/$LAST retrieval: zero-shot, fine-tuning, fine-tuned -> $OUT/retrieval*"
python eval.py --task retrieval --ckpt "$PRETRAINED" --data "$DATA/mindrecord/test.mindrecord" \
  --out "$OUT/retrieval_zeroshot" "${EVAL[@]}"
if [ "$MODE" != quick ]; then
  python train_retrieval.py --config "config/retrieval/$RUN.yaml" --set run.output_dir="$OUT/retrieval" \
    checkpoint.init="$PRETRAINED" "${COMMON[@]}"
  python eval.py --task retrieval --ckpt "$(newest "$OUT/retrieval/best")" \
    --data "$DATA/mindrecord/test.mindrecord" --out "$OUT/retrieval_finetuned"

  stage "6/$LAST captioning: fine-tuning, test split -> $OUT/caption"
  python train_caption.py --config "config/caption/$RUN.yaml" --set run.output_dir="$OUT/caption" \
    checkpoint.init="$PRETRAINED" "${COMMON[@]}"
  CAPTIONER="$(newest "$OUT/caption/best")"
  python eval.py --task caption --ckpt "$CAPTIONER" --split test --out_dir "$OUT/caption"

  stage "7/$LAST VQA: fine-tuning from the captioning model, test split -> $OUT/vqa"
  python train_vqa.py --config "config/vqa/$RUN.yaml" --set run.output_dir="$OUT/vqa" \
    checkpoint.init="$CAPTIONER" \
    data.train="$DATA/mindrecord/train_vqa.mindrecord" data.val="$DATA/mindrecord/val_vqa.mindrecord" \
    data.test="$DATA/mindrecord/test_vqa.mindrecord" data.vocab="$DATA/vocab.txt"
  python eval.py --task vqa --ckpt "$(newest "$OUT/vqa/best")" --split test --out_dir "$OUT/vqa"

  stage "8/$LAST text-to-image: image-decoding fine-tune, generation on the test split -> $OUT/t2i*"
  python train_pretrain.py --config "config/t2i/$RUN.yaml" --set run.output_dir="$OUT/t2i" \
    checkpoint.init="$PRETRAINED" "${COMMON[@]}"
  T2I="$(newest "$OUT/t2i/checkpoints")"
  if [ "$MODE" = full ]; then   # the second cycle: a warm restart from the first one's last checkpoint
    python train_pretrain.py --config config/t2i/demo_cycle2.yaml --set run.output_dir="$OUT/t2i_cycle2" \
      checkpoint.init="$T2I" "${COMMON[@]}"
    T2I="$(newest "$OUT/t2i_cycle2/checkpoints")"
  fi
  python eval.py --task t2i --ckpt "$T2I" --vq "$VQ_CKPT" --split test \
    --metrics_hook demo.scene_reader:t2i_metrics --out_dir "$OUT/t2i/eval"

  stage "9/$LAST MindIR: export the captioner, caption the test split with the exported graphs -> $OUT/export"
  python export.py --task caption --ckpt_file "$CAPTIONER" --file_name "$OUT/export/opt_caption"
  python eval.py --task caption --mindir "$OUT/export/opt_caption" --split test --out_dir "$OUT/export/eval"
fi

stage "$LAST/$LAST report -> $OUT/report.md"
case "$MODE" in   # the measured figures as data: docs/results/demo.md (default), demo_full.md (--full)
  short) RESULTS="${DEMO_RESULTS-docs/results/demo.md}"; COMMAND="bash scripts/run_demo.sh" ;;
  full) RESULTS="${DEMO_RESULTS-docs/results/demo_full.md}"; COMMAND="bash scripts/run_demo.sh --full" ;;
  *) RESULTS="${DEMO_RESULTS-}"; COMMAND="bash scripts/run_demo.sh --quick" ;;
esac
python -m demo.report "$OUT" --data "$DATA" --command "$COMMAND" ${RESULTS:+--results "$RESULTS"}
stage "done"
echo "stage times: $OUT/stages.jsonl; total $(( $(date +%s) - start ))s"
