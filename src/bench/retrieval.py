"""Retrieval speed: two-stage itc_itm against the exhaustive itm cross-encoder, and their R@1 on a subset.

Generates a demo test set (default 1,000 images x 5 captions), builds its vocabulary (or uses the checkpoint's) and
MindRecord in a temporary folder, then on the model (random init of --config, or --ckpt):

* itc_itm (top-k shortlist re-ranked by the cross-encoder) is timed end to end on the whole set;
* itm is timed on --itm_pairs pairs and extrapolated to every (caption, image) pair from its pairs/s, plus the same
  embedding time as itc_itm (stated as extrapolated in the results);
* both modes run fully on the first --subset images, and their R@1 is compared (meaningful only with a trained
  --ckpt; a random model scores at chance).
"""
import os
import tempfile
import time

import numpy as np

from src.bench import print_table
from src.config import load_config
from src.data.build_mindrecord import build_mindrecord
from src.data.demo import generate_demo
from src.data.manifest import read_manifest
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser):
    parser.add_argument("--ckpt", default=None, help="trained checkpoint (default: random init of --config)")
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "retrieval", "demo.yaml"),
                        help="run config (default config/retrieval/demo.yaml: the small model); with --ckpt, the "
                             "checkpoint's run config is used unless --config is given explicitly")
    parser.add_argument("--images", type=int, default=1000, help="images of the timed set (5 captions each)")
    parser.add_argument("--k", type=int, default=16, help="itc_itm shortlist size")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--itm_pairs", type=int, default=2048, help="pairs timed to measure the itm rate")
    parser.add_argument("--subset", type=int, default=100, help="images of the subset where both modes run fully")
    parser.add_argument("--workers", type=int, default=2)


def run(args):
    import mindspore as ms

    from src.evaluation.retrieval import evaluate
    from src.inference.loading import load_trained_model, resolve_config
    from src.inference.retrieval import Retriever

    if args.subset > args.images or min(args.images, args.subset, args.k, args.itm_pairs, args.batch_size) < 1:
        raise UserError("need 1 <= --subset <= --images and positive --k, --itm_pairs, --batch_size")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    explicit = args.config != os.path.join(ROOT, "config", "retrieval", "demo.yaml")
    cfg = (resolve_config(args.ckpt, args.config if explicit else None) if args.ckpt
           else load_config(args.config))
    with tempfile.TemporaryDirectory(prefix="opt_bench_retrieval_") as tmp:
        generate_demo(tmp, 1, 0, args.images, image_size=max(32, cfg.model.image.image_size), audio="tones",
                      workers=args.workers)
        vocab = cfg.data.vocab if args.ckpt else os.path.join(tmp, "vocab.txt")
        if not args.ckpt:
            write_vocab(vocab, build_vocab(manifest_texts(read_manifest(os.path.join(tmp, "test.jsonl")))))
        tokenizer = Tokenizer(vocab, cfg.data.lower_case)
        cfg = cfg.with_updates({"data.vocab": vocab, "data.use_audio": False, "data.workers": args.workers,
                                "model.text.vocab_size": tokenizer.vocab_size})
        full = os.path.join(tmp, "full.mindrecord")
        build_mindrecord(os.path.join(tmp, "test.jsonl"), full, vocab, workers=args.workers,
                         lower_case=cfg.data.lower_case)
        subset = _subset_record(tmp, args.subset, vocab, args.workers, cfg.data.lower_case)
        model = load_trained_model(cfg, args.ckpt)
        retriever = Retriever(model, args.batch_size)

        def timed(data, mode):
            start = time.perf_counter()
            result = evaluate(model, cfg, tokenizer, data, mode, args.k, retriever=retriever)
            return result, time.perf_counter() - start

        evaluate(model, cfg, tokenizer, subset, "itc_itm", args.k, retriever=retriever)  # compile every graph
        two_stage, two_stage_s = timed(full, "itc_itm")
        pairs_per_s = _itm_rate(retriever, args, cfg, tokenizer, full)
        n_pairs = two_stage["n_texts"] * two_stage["n_images"]
        itm_s = two_stage["seconds"]["embed"] + n_pairs / pairs_per_s
        sub_itm, sub_itm_s = timed(subset, "itm")
        sub_two, sub_two_s = timed(subset, "itc_itm")
    rows = [
        {"set": f"{two_stage['n_images']} images x {two_stage['n_texts']} captions", "mode": f"itc_itm k={args.k}",
         "seconds": two_stage_s, "pairs scored": two_stage["pairs_scored"], "how": "measured"},
        {"set": f"{two_stage['n_images']} images x {two_stage['n_texts']} captions", "mode": "itm",
         "seconds": itm_s, "pairs scored": n_pairs,
         "how": f"extrapolated ({pairs_per_s:.0f} pairs/s on {args.itm_pairs} pairs)"},
    ]
    for result, seconds, mode in ((sub_itm, sub_itm_s, "itm"), (sub_two, sub_two_s, f"itc_itm k={args.k}")):
        rows.append({"set": f"subset {result['n_images']} x {result['n_texts']}", "mode": mode, "seconds": seconds,
                     "pairs scored": result["pairs_scored"], "IR R@1": result["text_image"]["ir_r1"],
                     "TR R@1": result["text_image"]["tr_r1"], "how": "measured"})
    print_table(f"Retrieval on {'checkpoint ' + args.ckpt if args.ckpt else 'a randomly initialised model'} "
                f"({cfg.model.name}); speed-up of itc_itm over itm: {itm_s / two_stage_s:.0f}x",
                rows, ["set", "mode", "seconds", "pairs scored", "IR R@1", "TR R@1", "how"], floatfmt=".2f")
    return {"benchmark": "retrieval", "checkpoint": args.ckpt, "model": cfg.model.name, "k": args.k,
            "batch_size": args.batch_size, "itm_pairs_per_s": pairs_per_s, "speedup": itm_s / two_stage_s,
            "rows": rows}


def _itm_rate(retriever, args, cfg, tokenizer, data):
    """Cross-encoder pairs/s over `args.itm_pairs` random pairs of the set (token outputs embedded once)."""
    from src.data.pipeline import build_eval_dataset, read_references
    from src.evaluation.retrieval import caption_items

    captions, _ = caption_items(read_references(data))
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(captions), min(len(captions), args.batch_size * 8), replace=False)
    ids, mask = (np.stack(c) for c in zip(*[tokenizer.encode_padded(captions[i], cfg.model.text.max_len)
                                            for i in chosen]))
    texts = retriever.embed_texts(ids, mask)
    batches = build_eval_dataset(data, cfg, tokenizer, 1, columns=["index", "valid", "image"])
    images = retriever.embed_image_batches(
        (b for _, b in zip(range(args.batch_size * 8), batches.create_dict_iterator(num_epochs=1,
                                                                                     output_numpy=True))))
    pairs = np.stack([rng.integers(0, len(texts["features"]), args.itm_pairs),
                      rng.integers(0, len(images["features"]), args.itm_pairs)], 1)
    start = time.perf_counter()
    retriever.score_pairs(texts, images, pairs)
    return args.itm_pairs / (time.perf_counter() - start)


def _subset_record(tmp, n, vocab, workers, lower_case):
    """MindRecord of the first `n` samples of the generated test manifest."""
    with open(os.path.join(tmp, "test.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()[:n]
    manifest = os.path.join(tmp, "subset.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(lines)
    out = os.path.join(tmp, "subset.mindrecord")
    build_mindrecord(manifest, out, vocab, workers=workers, lower_case=lower_case)
    return out
