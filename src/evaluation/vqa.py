"""VQA evaluation and inference: `python eval.py --task vqa ...`.

    python eval.py --task vqa --ckpt RUN/best/step_X --image img.jpg --question "图中有几个圆？"
    python eval.py --task vqa --ckpt RUN/best/step_X [--split test] [--closed_vocab] [--out_dir DIR]
    python eval.py --task vqa --mindir EXPORT_PREFIX [...]          # generative answers from exported graphs

With --image/--question, prints the answer (and, for a model trained with vqa.rationale, its rationale on a second
line). Without, answers every question of the data.<split> MindRecord and reports exact-match accuracy (after
answer normalisation), VQA v2 accuracy (when questions have >= 3 answers), OFA's confidence accuracy (when the
answers have confidences, `answer_scores`), the majority-answer baseline of data.train,
and for long free-form answers (FM-IQA style; `--caption_metrics auto`: when the reference answers average more than 3
tokens) the caption metrics. Writes <out_dir>/vqa_<split>.json and .md
(with examples) and the predictions as vqa_<split>_predictions.jsonl. --closed_vocab answers with the best-scoring
answer seen in data.train (config vqa.answer_list_size keeps only the most frequent ones; 0 = all).
"""
import os
from collections import Counter

from src.utils.files import write_jsonl
from src.utils.cli import docstring_parser
from src.evaluation.caption import (EXAMPLES, add_common_arguments, audio_of, decoding_overrides, eval_batches,
                                    split_path, write_report)
from src.metrics.caption import caption_metrics
from src.utils.results import markdown_table
from src.metrics.vqa import majority_baseline, normalize_answer, vqa_metrics

LONG_ANSWER_TOKENS = 3


def answer_list(references, lang, size=0):
    """Candidate answers of a closed vocabulary: the training answers by frequency of their normalised form (each
    written as first seen), the `size` most frequent (0 = all)."""
    counts, spelling = Counter(), {}
    for record in references:
        for answer in record["answers"]:
            key = normalize_answer(answer, lang)
            counts[key] += 1
            spelling.setdefault(key, answer)
    ranked = [spelling[key] for key, _ in counts.most_common()]
    return ranked[:size] if size else ranked


def predict_responses(answerer, data_path, cfg, tokenizer, batch_size=16):
    """{record index: (answer, rationale or None)} for every question of the MindRecord at `data_path`."""
    predictions = {}
    for batch, valid in eval_batches(data_path, cfg, tokenizer, batch_size, "vqa"):
        responses = answerer.respond(batch["image"], batch["question_ids"], batch["question_mask"], *audio_of(batch))
        predictions.update((int(i), r) for i, r, ok in zip(batch["index"], responses, valid) if ok)
    return predictions


def predict_answers(answerer, data_path, cfg, tokenizer, batch_size=16):
    """{record index: answer} for every question of the MindRecord at `data_path`."""
    return {i: answer for i, (answer, _) in predict_responses(answerer, data_path, cfg, tokenizer, batch_size).items()}


def answer_scores(predictions, references):
    """vqa_metrics of {index: answer} against the records of `read_references`, keyed by question id, and
    `unanswered`: how many answers are empty (a rationale model that reached vqa.max_len before its separator)."""
    preds = {references[i]["id"]: predictions[i] for i in predictions}
    answers = {references[i]["id"]: references[i]["answers"] for i in predictions}
    scores = {references[i]["id"]: references[i].get("answer_scores", []) for i in predictions}
    unanswered = sum(not answer.strip() for answer in predictions.values())
    return {**vqa_metrics(preds, answers, references[0]["lang"], scores), "unanswered": unanswered}


def headline(metrics):
    """The accuracy a run is judged by: VQA v2 accuracy when defined, else exact match (percent)."""
    return metrics.get("vqa_accuracy", metrics["exact_match"])


def validation_evaluator(model, cfg, tokenizer, data_path, answers=None, batch_size=16):
    """evaluator(step) -> {"score": accuracy, ...} of greedy (or closed-vocabulary) answers on `data_path`."""
    from src.data.pretrain_data import read_references
    from src.inference.text_generator import Answerer, TextGenerator, decoding_settings
    references = read_references(data_path)
    answerer = Answerer(TextGenerator(model, tokenizer, decoding_settings(cfg, "vqa", strategy="greedy")), answers,
                        cfg.vqa.rationale)

    def evaluate(step):
        metrics = answer_scores(predict_answers(answerer, data_path, cfg, tokenizer, batch_size), references)
        return {"score": headline(metrics), **{k: v for k, v in metrics.items() if k != "n_questions"}}
    # what of the data shapes its graphs (the compile-cache key leaves data paths out): the last batch's size and
    # the number of candidate answers
    evaluate.graph_signature = {"records": len(references), "answers": len(answers) if answers else 0}
    return evaluate


def long_answers(references, lang):
    from src.tasks.caption import reward_tokens
    lengths = [len(reward_tokens(a, lang).split()) for r in references for a in r["answers"]]
    return bool(lengths) and sum(lengths) / len(lengths) > LONG_ANSWER_TOKENS


def training_references(cfg):
    from src.data.pretrain_data import read_references
    return read_references(cfg.data.train) if cfg.data.train else None


def evaluate_split(vqa, split, out_dir, batch_size, caption_mode="auto", train_refs=None, metrics_hooks=()):
    """Answer data.<split>, score (plus the extra metrics of `metrics_hooks`, src.evaluation.hooks) and write the
    report; returns the results dict."""
    from src.data.pretrain_data import read_references
    from src.evaluation.hooks import Evaluation, run_hooks
    cfg = vqa.cfg
    path = split_path(cfg, split)
    references = read_references(path)
    lang = references[0]["lang"]
    responses = predict_responses(vqa.answerer, path, cfg, vqa.tokenizer, batch_size)
    predictions = {i: answer for i, (answer, _) in responses.items()}
    results = {"split": split, "data": path, "lang": lang, **answer_scores(predictions, references),
               "mode": "closed vocabulary" if vqa.answerer.answers else "generative"}
    if train_refs:
        gt = {references[i]["id"]: references[i]["answers"] for i in predictions}
        baseline = majority_baseline({r["id"]: r["answers"] for r in train_refs}, gt, lang)
        results["majority_baseline"] = headline(baseline)
        results["majority_answer"] = baseline["answer"]
    if caption_mode == "on" or (caption_mode == "auto" and long_answers(references, lang)):
        preds = {references[i]["id"]: predictions[i] for i in predictions}
        refs = {references[i]["id"]: references[i]["answers"] for i in predictions}
        results["caption_metrics"] = caption_metrics(preds, refs, lang=lang)
    rows = [{"id": references[i]["id"], "image_id": references[i]["image_id"], "answer": a,
             "answers": references[i]["answers"], **({"rationale": why} if why is not None else {})}
            for i, (a, why) in responses.items()]
    results.update(run_hooks(metrics_hooks, Evaluation("vqa", split, path, out_dir, dict(results), rows)))
    write_jsonl(os.path.join(out_dir, f"vqa_{split}_predictions.jsonl"), rows)
    columns = ["id", "answer", "reference"] + (["rationale"] if vqa.answerer.rationale else [])
    examples = [{"id": r["id"], "answer": r["answer"], "reference": ", ".join(r["answers"]),
                 **({"rationale": r["rationale"]} if "rationale" in r else {})} for r in rows[:EXAMPLES]]
    write_report(out_dir, f"vqa_{split}", f"VQA on {split} ({path})", results, examples, columns)
    return results


def main(argv=None, metrics_hooks=()):
    parser = docstring_parser(__doc__, "eval.py --task vqa")
    add_common_arguments(parser)
    parser.add_argument("--image", default=None, help="answer a question about this image")
    parser.add_argument("--question", default=None, help="the question (with --image)")
    parser.add_argument("--closed_vocab", action="store_true", default=None,
                        help="pick the best-scoring answer seen in data.train (default: config vqa.closed_vocab)")
    parser.add_argument("--caption_metrics", choices=["auto", "on", "off"], default="auto",
                        help="also score answers with the caption metrics (default auto: for long answers)")
    args = parser.parse_args(argv)
    from src.errors import UserError
    from src.inference.loading import resolve_config
    from src.inference.pipeline import VQA
    if (args.image is None) != (args.question is None):
        raise UserError("give --image and --question together (or neither, to evaluate a data split)")
    if args.mindir:
        from src.inference.exported_model import ExportedModel
        cfg = ExportedModel(args.mindir, "vqa", args.overrides).cfg
    else:
        cfg = resolve_config(args.ckpt, args.config or None, args.overrides)
    closed = args.closed_vocab if args.closed_vocab is not None else cfg.vqa.closed_vocab
    train_refs = training_references(cfg) if closed or args.image is None else None
    if closed and not train_refs:
        raise UserError("closed-vocabulary VQA takes its answers from data.train; set data.train to the training "
                        "MindRecord")
    answers = answer_list(train_refs, train_refs[0]["lang"], cfg.vqa.answer_list_size) if closed else None
    vqa = VQA(args.ckpt, args.config or None, args.overrides, args.batch_size, answers, args.mindir,
              **decoding_overrides(args))
    if args.image is not None:
        answer, rationale = vqa.respond(args.image, args.question)
        print(answer)
        if rationale is not None:
            print(f"rationale: {rationale}")
        return 0
    out_dir = args.out_dir or os.path.join(cfg.run.output_dir, "eval")
    results = evaluate_split(vqa, args.split, out_dir, args.batch_size, args.caption_metrics, train_refs,
                             metrics_hooks)
    rows = [{"metric": k, "value": v} for k, v in results.items() if isinstance(v, (int, float))]
    print(markdown_table(rows, ["metric", "value"]))
    print(f"results written to {out_dir}/vqa_{args.split}.json and .md")
    return 0
