"""Captioning evaluation and inference: `python eval.py --task caption ...`.

    python eval.py --task caption --ckpt RUN/best/step_X --image img.jpg|folder [--out captions.jsonl]
    python eval.py --task caption --ckpt RUN/best/step_X [--split test] [--out_dir DIR]
    python eval.py --task caption --mindir EXPORT_PREFIX [...]      # the same on exported MindIR graphs

With --image, prints `<file>\\t<caption>` per image and writes them as JSONL (default <out_dir>/captions.jsonl).
Without it, captions every image of the data.<split> MindRecord and scores them with BLEU-1..4, METEOR, ROUGE-L and
CIDEr-D (src/metrics/caption.py) into <out_dir>/caption_<split>.json and .md (with example captions), plus the
predictions as caption_<split>_predictions.jsonl. <out_dir> defaults to <run>/eval. SPICE is not offered (it needs
a Java scene-graph parser and model downloads).
"""
import json
import os

import numpy as np
from src.utils.progress import progress

from src.utils.cli import docstring_parser
from src.config import add_config_arguments
from src.metrics.caption import caption_metrics
from src.utils.results import markdown_table
from src.utils.files import atomic_write_text, write_jsonl

EXAMPLES = 8   # examples shown in the markdown report


def add_common_arguments(parser):
    """--ckpt or --mindir, --config, --set, --split, --out_dir, --batch_size and the decoding options shared with
    VQA."""
    add_model_arguments(parser)
    add_config_arguments(parser, default_config="")  # empty: the config.yaml of the checkpoint's run
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which data.<split> MindRecord to evaluate (default test)")
    parser.add_argument("--out_dir", default=None, help="where results go (default: <run.output_dir>/eval)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--strategy", choices=["greedy", "beam", "sample"], default=None)
    parser.add_argument("--beam_size", type=int, default=None)
    parser.add_argument("--max_len", type=int, default=None, help="tokens generated at most (EOS included)")
    parser.add_argument("--length_penalty", type=float, default=None)
    parser.add_argument("--no_repeat_ngram", type=int, default=None)


def add_model_arguments(parser):
    """--ckpt CKPT or --mindir EXPORT (exactly one): what to evaluate."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint step directory (e.g. RUN/best/step_00000300)")
    source.add_argument("--mindir", metavar="PREFIX", help="run the graphs of export.py instead: its --file_name "
                                                           "PREFIX, PREFIX_export.json or their folder")


def decoding_overrides(args):
    return {k: getattr(args, k) for k in ("strategy", "beam_size", "max_len", "length_penalty", "no_repeat_ngram")}


def split_path(cfg, split):
    from src.errors import UserError
    path = cfg.data[split]
    if not path:
        raise UserError(f"data.{split} is empty: set it to a MindRecord (--set data.{split}=PATH) or pass --image")
    return path


def eval_batch_size(count, wanted):
    """`wanted`, or the record count when smaller (no batch of filler rows only): build_eval_dataset fills the last
    batch by repeating a record (marked invalid), whatever the count. (This used to be the largest divisor of the
    count up to `wanted`, from before the filler rows came from a separate reader: 157 records ran at batch 1.)"""
    return max(1, min(int(wanted), count))


def eval_batches(data_path, cfg, tokenizer, batch_size, desc):
    """Ordered evaluation batches (all records, this process alone) with a progress bar; `valid` marks real rows."""
    from src.data.pretrain_data import build_eval_dataset, open_mindrecord
    count = open_mindrecord(data_path, cfg.data.vocab).count
    data = build_eval_dataset(data_path, cfg, tokenizer, eval_batch_size(count, batch_size))
    for batch in progress(data.create_dict_iterator(num_epochs=1, output_numpy=True), total=data.get_dataset_size(),
                      desc=desc, leave=False):
        yield batch, batch["valid"].astype(bool)


def audio_of(batch):
    return (batch["audio"], batch["frame_mask"]) if "audio" in batch else (None, None)


def predict_captions(generator, data_path, cfg, tokenizer, batch_size=16, **decoding):
    """{record index: caption} for every record of the MindRecord at `data_path`."""
    predictions = {}
    for batch, valid in eval_batches(data_path, cfg, tokenizer, batch_size, "caption"):
        texts = generator.run(batch["image"], *audio_of(batch), **decoding)
        predictions.update((int(i), t) for i, t, ok in zip(batch["index"], texts, valid) if ok)
    return predictions


def corpus_cider(predictions, references):
    """CIDEr-D of {index: caption} against the records of `read_references` (fast: no Java)."""
    from src.tasks.caption import cider_scores
    keys = sorted(predictions)
    return float(np.mean(cider_scores([predictions[k] for k in keys], [references[k]["captions"] for k in keys],
                                      references[keys[0]]["lang"])))


def validation_evaluator(model, cfg, tokenizer, data_path, batch_size=16):
    """evaluator(step) -> {"score": CIDEr-D, "cider_d": ...} of greedy captions on `data_path` (for the Trainer)."""
    from src.data.pretrain_data import read_references
    from src.inference.text_generator import TextGenerator, decoding_settings
    references = read_references(data_path)
    generator = TextGenerator(model, tokenizer, decoding_settings(cfg, "caption", strategy="greedy"))

    def evaluate(step):
        cider = corpus_cider(predict_captions(generator, data_path, cfg, tokenizer, batch_size), references)
        return {"score": cider, "cider_d": cider}
    evaluate.graph_signature = {"records": len(references)}   # the last batch's size follows it
    return evaluate


def write_report(out_dir, name, title, results, examples, example_columns):
    """<out_dir>/<name>.json (results + examples) and <name>.md (metric table, then an examples table)."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {**results, "examples": examples}
    atomic_write_text(os.path.join(out_dir, f"{name}.json"), json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    metrics = [{"metric": k, "value": v} for k, v in results.items() if isinstance(v, (int, float, str))]
    text = (f"# {title}\n\n" + markdown_table(metrics, ["metric", "value"], floatfmt=".4f")
            + "\n## Examples\n\n" + markdown_table(examples, example_columns))
    atomic_write_text(os.path.join(out_dir, f"{name}.md"), text)
    return os.path.join(out_dir, f"{name}.json")


def evaluate_split(captioner, split, out_dir, batch_size, metrics_hooks=()):
    """Caption data.<split>, score it (plus the extra metrics of `metrics_hooks`, src.evaluation.hooks) and write
    the report; returns the metrics."""
    from src.evaluation.hooks import Evaluation, run_hooks
    from src.data.pretrain_data import read_references
    cfg = captioner.cfg
    path = split_path(cfg, split)
    references = read_references(path)
    predictions = predict_captions(captioner.generator, path, cfg, captioner.tokenizer, batch_size)
    lang = references[0]["lang"]
    refs = {references[i]["id"]: references[i]["captions"] for i in predictions}
    preds = {references[i]["id"]: predictions[i] for i in predictions}
    metrics = caption_metrics(preds, refs, lang=lang)
    results = {"split": split, "data": path, "lang": lang, **metrics, "decoding": captioner.generator.settings}
    rows = [{"id": key, "image_id": references[i]["image_id"], "caption": predictions[i],
             "references": references[i]["captions"]} for key, i in zip(preds, predictions)]
    extra = run_hooks(metrics_hooks, Evaluation("caption", split, path, out_dir, dict(results), rows))
    metrics.update(extra)
    results.update(extra)
    write_jsonl(os.path.join(out_dir, f"caption_{split}_predictions.jsonl"), rows)
    examples = [{"id": r["id"], "generated": r["caption"], "reference": r["references"][0]} for r in rows[:EXAMPLES]]
    write_report(out_dir, f"caption_{split}", f"Captioning on {split} ({path})", results, examples,
                 ["id", "generated", "reference"])
    return metrics


def main(argv=None, metrics_hooks=()):
    parser = docstring_parser(__doc__, "eval.py --task caption")
    add_common_arguments(parser)
    parser.add_argument("--image", default=None, help="caption this image file, or every image of this folder "
                                                      "(region-feature .npz files for a model.image.mode features "
                                                      "model, e.g. the converted model-zoo caption checkpoint)")
    parser.add_argument("--out", default=None, help="with --image: JSONL file for the captions "
                                                    "(default <out_dir>/captions.jsonl)")
    args = parser.parse_args(argv)
    from src.inference.pipeline import IMAGE_EXTENSIONS, REGION_EXTENSIONS, Captioner, image_files
    captioner = Captioner(args.ckpt, args.config or None, args.overrides, args.batch_size, args.mindir,
                          **decoding_overrides(args))
    features = captioner.cfg.model.image.mode == "features"
    files = image_files(args.image, REGION_EXTENSIONS if features else IMAGE_EXTENSIONS) if args.image else None
    out_dir = args.out_dir or os.path.join(captioner.cfg.run.output_dir, "eval")
    if files:
        captions = captioner.caption(files)
        for path, caption in zip(files, captions):
            print(f"{path}\t{caption}")
        out = args.out or os.path.join(out_dir, "captions.jsonl")
        write_jsonl(out, [{"image": p, "caption": c} for p, c in zip(files, captions)])
        print(f"captions written to {out}")
        return 0
    metrics = evaluate_split(captioner, args.split, out_dir, args.batch_size, metrics_hooks)
    print(markdown_table([{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))],
                         ["metric", "value"], floatfmt=".4f"))
    print(f"results written to {out_dir}/caption_{args.split}.json and .md")
    return 0
