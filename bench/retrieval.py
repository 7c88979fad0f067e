"""Retrieval speed: two-stage itc_itm against the exhaustive itm cross-encoder, and their R@1 on a subset.

Generates a demo test set (default 1,000 images x 5 captions), builds its vocabulary (or uses the checkpoint's) and
MindRecord in a temporary folder, then on the model (random init of --config, or --ckpt), after one warm-up run that
compiles every graph:

* itm runs fully on the first --subset images, once before and once after the whole-set itc_itm run; its
  cross-encoder rate (pairs per second of the two runs' scoring stages together) gives the extrapolated itm time of
  the whole set: the whole set's non-scoring stages (measured in the itc_itm run: the same single-modal embeddings)
  plus every (caption, image) pair at that rate. Both modes score pairs with the same Cell at the same batch shape,
  so their per-pair cost is the same; timing itm on both sides of the long run keeps a drift of the machine's speed
  from favouring either mode (measured drift: docs/retrieval.md);
* itc_itm (top-k shortlist re-ranked by the cross-encoder) is measured end to end on the whole set;
* itc_itm also runs fully on the subset, and both modes' R@1 there are compared (meaningful only with a trained
  --ckpt; a random model scores at chance).

Every figure is given in wall seconds and in process CPU seconds (all threads of this process); CPU time moves far
less than wall time when other jobs share the cores. Per stage (embed_texts, embed_images, shortlist, score, rank)
times of each run are in the results too.
"""
import os
import tempfile
import time

from bench import print_table
from demo.data import generate_demo
from src.config import load_config
from src.data.build_mindrecord import build_mindrecord
from src.data.manifest import read_manifest
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_arguments(parser):
    parser.add_argument("--ckpt", default=None, help="trained checkpoint (default: random init of --config)")
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "retrieval", "demo.yaml"),
                        help="run config (default config/retrieval/demo.yaml: the small model); with --ckpt, the "
                             "checkpoint's run config is used unless --config is given explicitly")
    parser.add_argument("--images", type=int, default=1000, help="images of the timed set (5 captions each)")
    parser.add_argument("--k", type=int, default=16, help="itc_itm shortlist size")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--subset", type=int, default=100, help="images of the subset where both modes run fully")
    parser.add_argument("--workers", type=int, default=2)


def run(args):
    import mindspore as ms

    from src.evaluation.retrieval import evaluate
    from src.inference.loading import load_trained_model, resolve_config
    from src.inference.retrieval import RetrievalRunner

    if args.subset > args.images or min(args.images, args.subset, args.k, args.batch_size) < 1:
        raise UserError("need 1 <= --subset <= --images and positive --k, --batch_size")
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
        retriever = RetrievalRunner(model, args.batch_size)

        def timed(data, mode):
            wall, cpu = time.perf_counter(), time.process_time()
            result = evaluate(model, cfg, tokenizer, data, mode, args.k, retriever=retriever)
            result["total"] = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
            return result

        timed(subset, "itc_itm")  # compiles every graph
        itm_before = timed(subset, "itm")
        two_stage = timed(full, "itc_itm")
        itm_after = timed(subset, "itm")
        sub_two = timed(subset, "itc_itm")
    sub_itm = _pooled(itm_before, itm_after)
    n_pairs = two_stage["n_texts"] * two_stage["n_images"]
    itm = {clock: _extrapolated_itm(two_stage, sub_itm, n_pairs, clock) for clock in CLOCKS}
    speedup = {clock: itm[clock] / two_stage["total"][clock] for clock in CLOCKS}
    itm_rate, two_rate = _pair_rate(sub_itm, "seconds"), _pair_rate(two_stage, "seconds")
    full_set = f"{two_stage['n_images']} images x {two_stage['n_texts']} captions"
    rows = [
        _row(full_set, f"itc_itm k={args.k}", two_stage, "measured"),
        {"set": full_set, "mode": "itm", "seconds": itm["seconds"], "CPU s": itm["cpu_seconds"],
         "pairs scored": n_pairs, "how": f"extrapolated ({itm_rate:.0f} pairs/s of the subset's itm runs)"},
        _row(f"subset {sub_itm['n_images']} x {sub_itm['n_texts']}", "itm", itm_before, "measured, before"),
        _row(f"subset {sub_itm['n_images']} x {sub_itm['n_texts']}", "itm", itm_after, "measured, after"),
        _row(f"subset {sub_two['n_images']} x {sub_two['n_texts']}", f"itc_itm k={args.k}", sub_two, "measured"),
    ]
    print_table(f"Retrieval on {'checkpoint ' + args.ckpt if args.ckpt else 'a randomly initialised model'} "
                f"({cfg.model.name}); itc_itm over itm: {speedup['seconds']:.0f}x in wall time, "
                f"{speedup['cpu_seconds']:.0f}x in CPU time",
                rows, ["set", "mode", "seconds", "CPU s", "pairs scored", "pairs/s", "IR R@1", "TR R@1", "how"],
                floatfmt=".2f")
    stage_rows = [{"run": label, "clock": clock, **result[clock]}
                  for label, result in ((f"{full_set}, itc_itm", two_stage), ("subset, itm before", itm_before),
                                        ("subset, itm after", itm_after))
                  for clock in CLOCKS]
    print_table("Seconds per stage", stage_rows, ["run", "clock"] + STAGES, floatfmt=".2f")
    return {"benchmark": "retrieval", "checkpoint": args.ckpt, "model": cfg.model.name, "k": args.k,
            "batch_size": args.batch_size, "itm_pairs_per_s": itm_rate,
            "itm_pairs_per_s_before_after": [_pair_rate(itm_before, "seconds"), _pair_rate(itm_after, "seconds")],
            "itc_itm_pairs_per_s": two_rate,
            "speedup": speedup["seconds"], "speedup_cpu": speedup["cpu_seconds"], "rows": rows,
            "stages": stage_rows}


CLOCKS = ("seconds", "cpu_seconds")
STAGES = ["embed_texts", "embed_images", "shortlist", "score", "rank"]


def _pair_rate(result, clock):
    """Cross-encoder pairs per second of a run's scoring stage."""
    return result["pairs_scored"] / result[clock]["score"]


def _pooled(first, second):
    """Two runs of the same evaluation as one: pairs and stage times added (recalls are the same)."""
    pooled = dict(first, pairs_scored=first["pairs_scored"] + second["pairs_scored"])
    for key in CLOCKS + ("total",):
        pooled[key] = {name: first[key][name] + second[key][name] for name in first[key]}
    return pooled


def _extrapolated_itm(two_stage, sub_itm, n_pairs, clock):
    """itm time of the whole set: the itc_itm run's time outside its shortlist and scoring stages (the same
    embeddings and ranking) plus `n_pairs` at the subset itm run's cross-encoder rate."""
    stages = two_stage[clock]
    return two_stage["total"][clock] - stages["shortlist"] - stages["score"] + n_pairs / _pair_rate(sub_itm, clock)


def _row(label, mode, result, how):
    """A table row of a measured run; pairs/s is the rate of its scoring stage (wall)."""
    row = {"set": label, "mode": mode, "seconds": result["total"]["seconds"],
           "CPU s": result["total"]["cpu_seconds"], "pairs scored": result["pairs_scored"],
           "pairs/s": _pair_rate(result, "seconds"), "how": how}
    if label.startswith("subset"):
        row.update({"IR R@1": result["text_image"]["ir_r1"], "TR R@1": result["text_image"]["tr_r1"]})
    return row


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
