"""Cross-modal retrieval evaluation: `python eval.py --task retrieval --ckpt CKPT [options]`.

Text items are EVERY caption of every record (each caption is its own query); image items are the records. IR =
text -> image (a caption hits when its record's image is in the top K), TR = image -> text (an image hits when any
of its captions is in the top K); recalls in percent with pessimistic ties, plus the expected recall of a random
ranking ("chance"). With audio in the data, text -> audio, audio -> text, image -> audio and audio -> image recalls by
the towers' contrastive embeddings (itc) are added whatever the mode: the cross-encoder heads are not used for audio.
They are over the records whose clip exists only (n_audio of them; `audio_recalls`), each with its own chance row.

Results go to <out>/retrieval.json and retrieval.md (default out: <run of the checkpoint>/eval_retrieval, or
<export folder>/eval_retrieval with --mindir); retrieval.json also holds `examples`: the first caption of each of the
first 8 records as a query, with its best 5 images (id, image source) by the IR scores. Under a distributed launcher
every rank embeds and scores its share (r::world) and rank 0 writes.

    python eval.py --task retrieval --ckpt RUN/best/step_00000100 --mode itc_itm --k 16
    python eval.py --task retrieval --ckpt CKPT --index_out images.npz                   # also save an image index
    python eval.py --task retrieval --ckpt CKPT --index images.npz --query "一只红色的圆" --top 5
    python eval.py --task retrieval --ckpt CKPT --index images.npz --queries queries.txt   # one per line
    python eval.py --task retrieval --mindir EXPORT_PREFIX --mode itc_itm    # on exported MindIR graphs
"""
import os
import sys
import time

import numpy as np

from src.utils.cli import docstring_parser
from src.utils.files import write_jsonl
from src.engine.distributed import all_gather_numpy
from src.errors import UserError
from src.inference.retrieval import (MODES, RetrievalRunner, cosine_scores, gather_items, gather_pair_scores,
                                     load_index, mode_matrices, query_pairs, save_index, search_index,
                                     shard_positions)
from src.metrics.retrieval import chance_retrieval_recall, retrieval_recall

KS = (1, 5, 10)
EXAMPLES = 8        # example queries kept in the results
EXAMPLE_TOP = 5     # images per example query
HOOK_TOP = 10       # best images per caption handed to metrics hooks
TABLE_COLUMNS = ["retrieval", "scoring"] + [f"R@{k}" for k in KS] + ["mean"]
# (result section, recall prefix, row label)
DIRECTIONS = (("text_image", "ir", "text→image (IR)"), ("text_image", "tr", "image→text (TR)"),
              ("text_audio", "ir", "text→audio"), ("text_audio", "tr", "audio→text"),
              ("image_audio", "ir", "image→audio"), ("image_audio", "tr", "audio→image"))


def caption_items(references):
    """Every caption of every record as a text item: (captions, text_to_image int64 record index per caption)."""
    captions, text_to_image = [], []
    for record, ref in enumerate(references):
        texts = [text for text in ref["captions"] if text.strip()]
        if not texts:
            raise UserError(f"retrieval: record {ref['id']} has no caption; every image needs at least one "
                            "(drop it from the manifest and rebuild the MindRecord)")
        captions += texts
        text_to_image += [record] * len(texts)
    return captions, np.array(text_to_image, np.int64)


def directional_recall(ir_scores, tr_scores, text_to_image, ks=KS):
    """retrieval_recall with IR read from `ir_scores` and TR from `tr_scores` (both (n_texts, n_images))."""
    ir = retrieval_recall(ir_scores, text_to_image, ks)
    tr = ir if tr_scores is ir_scores else retrieval_recall(tr_scores, text_to_image, ks)
    result = {key: value for key, value in ir.items() if not key.startswith("tr_")}
    result.update({key: value for key, value in tr.items() if key.startswith("tr_")})
    ir_values, tr_values = ([result[f"{d}_r{k}"] for k in ks] for d in ("ir", "tr"))
    result["r_mean"] = float(np.mean(ir_values + tr_values))
    result["rsum"] = float(sum(ir_values) + sum(tr_values))
    return result


def audio_recalls(text_features, image_features, audio_features, has_audio, text_to_image, ks=KS):
    """Text <-> audio and image <-> audio recalls by cosine of the towers' features over the records whose clip
    exists (`has_audio` (n_images,) nonzero) only: an absent clip is neither a query nor a candidate, and the captions
    of a record without audio are no queries. Returns n_audio (records with audio), and when there is any,
    text_audio / image_audio with their own chance rows chance_text_audio / chance_image_audio (of those items)."""
    items = np.flatnonzero(np.asarray(has_audio).reshape(-1))
    out = {"n_audio": int(len(items))}
    if not len(items):
        return out
    record_to_item = np.full(len(has_audio), -1, np.int64)
    record_to_item[items] = np.arange(len(items))
    queries = np.flatnonzero(record_to_item[text_to_image] >= 0)
    text_to_audio = record_to_item[text_to_image[queries]]
    audio = audio_features[items]
    out["text_audio"] = retrieval_recall(cosine_scores(text_features[queries], audio), text_to_audio, ks)
    out["chance_text_audio"] = chance_retrieval_recall(text_to_audio, len(items), ks)
    out["image_audio"] = retrieval_recall(cosine_scores(image_features[items], audio), np.arange(len(items)), ks)
    out["chance_image_audio"] = chance_retrieval_recall(np.arange(len(items)), len(items), ks)
    return out


class StageClock:
    """Wall and process CPU seconds of consecutive stages: `lap(name)` closes the stage that ran since the last lap.
    CPU time counts every thread of this process, so it moves far less than wall time when other jobs share the
    cores."""

    def __init__(self):
        self.wall, self.cpu = {}, {}
        self._last = (time.perf_counter(), time.process_time())

    def lap(self, name):
        now = (time.perf_counter(), time.process_time())
        self.wall[name], self.cpu[name] = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now


def top_images(ir, top):
    """Record indices (n_texts, top) of each text's best `top` images by the IR matrix, best first."""
    top = min(top, ir.shape[1])
    best = np.argpartition(-ir, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(ir, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def retrieval_examples(captions, text_to_image, references, sources, ir, count=EXAMPLES, top=EXAMPLE_TOP):
    """The first caption of each of the first `count` records as a query: its text, its record's id, and its best
    `top` images (id, image source, whether it is the query's own image)."""
    first = [int(np.flatnonzero(text_to_image == record)[0]) for record in range(min(count, len(references)))]
    best = top_images(ir[first], top)
    return [{"query": captions[t], "target": references[text_to_image[t]]["id"],
             "top": [{"id": references[i]["id"], "source": sources[i], "hit": bool(i == text_to_image[t])}
                     for i in row]} for t, row in zip(first, best.tolist())]


def evaluate(model, cfg, tokenizer, data_path, mode="itc_itm", k=16, batch_size=32, rank=0, world=1,
             gather=all_gather_numpy, retriever=None, return_features=False, return_ranking=False):
    """Retrieval recalls of `model` on the MindRecord `data_path`; the same dict on every rank.

    Keys: mode, k, data, n_texts, n_images, pairs_scored, text_image, chance, n_audio and text_audio / image_audio /
    chance_text_audio / chance_image_audio when the data has audio (`audio_recalls`), examples
    (`retrieval_examples`), and seconds / cpu_seconds: wall and process CPU time of this rank per stage (embed_texts,
    embed_images, shortlist and score when pairs are scored, rank; see `StageClock`). With `return_features`, also
    "image_features" (n_images, D) for an index; with `return_ranking`, "records": one
    {caption, target, top} per caption for metrics hooks (src.evaluation.hooks).
    """
    from src.data.pretrain_data import build_eval_dataset, open_mindrecord, read_references

    if mode not in MODES:
        raise UserError(f"retrieval mode {mode!r} is unknown; choose from {', '.join(MODES)}")
    if k < 1:
        raise UserError(f"retrieval --k must be >= 1, got {k}")
    retriever = retriever or RetrievalRunner(model, batch_size)
    info = open_mindrecord(data_path, cfg.data.vocab)
    has_audio = bool(info.meta["has_audio"]) and cfg.data.use_audio
    references = read_references(data_path)
    captions, text_to_image = caption_items(references)
    n_texts, n_images = len(captions), info.count
    keep_tokens = mode != "itc"
    clock = StageClock()

    positions, valid = shard_positions(n_texts, rank, world)
    encoded = [tokenizer.encode_padded(captions[p], cfg.model.text.max_len) for p in positions]
    ids, mask = (np.stack(column) for column in zip(*encoded))
    local = {"index": positions, "valid": valid, **retriever.embed_texts(ids, mask, keep_tokens)}
    texts = gather_items(local, n_texts, gather)
    clock.lap("embed_texts")

    columns = ["index", "valid", "image"] + (["audio", "frame_mask"] if has_audio else [])
    # read one record per pipeline batch: build_eval_dataset's filler rows may not outnumber the records, and the
    # RetrievalRunner re-batches to its own fixed size anyway
    batches = build_eval_dataset(data_path, cfg, tokenizer, 1, rank, world, columns=columns)
    local = retriever.embed_image_batches(batches.create_dict_iterator(num_epochs=1, output_numpy=True),
                                          keep_tokens, has_audio)
    images = gather_items(local, n_images, gather)
    clock.lap("embed_images")

    itc = cosine_scores(texts["features"], images["features"])
    pairs = scores = None
    if mode != "itc":
        pairs = query_pairs(mode, itc, k, rank, world)
        clock.lap("shortlist")
        scores = retriever.score_pairs(texts, images, pairs)
        pairs, scores = gather_pair_scores(pairs, scores, gather)
        clock.lap("score")
    ir, tr = mode_matrices(mode, itc, pairs, scores, k)
    results = {
        "mode": mode, "k": int(k) if mode == "itc_itm" else None, "data": data_path, "n_texts": n_texts,
        "n_images": n_images, "pairs_scored": 0 if pairs is None else int(len(pairs)),
        "text_image": directional_recall(ir, tr, text_to_image),
        "chance": chance_retrieval_recall(text_to_image, n_images, KS),
        "examples": retrieval_examples(captions, text_to_image, references, image_sources(data_path, references),
                                       ir),
    }
    if return_ranking:
        ids = [ref["id"] for ref in references]
        results["records"] = [{"caption": caption, "target": ids[target], "top": [ids[i] for i in row]}
                              for caption, target, row in zip(captions, text_to_image.tolist(),
                                                              top_images(ir, HOOK_TOP).tolist())]
    if has_audio:
        results.update(audio_recalls(texts["features"], images["features"], images["audio_features"],
                                     images["has_audio"], text_to_image))
    clock.lap("rank")
    results["seconds"], results["cpu_seconds"] = clock.wall, clock.cpu
    if return_features:
        results["image_features"] = images["features"]
    return results


def table_rows(results):
    """One markdown row per retrieval direction, each followed by its chance row."""
    rows = []
    for section, prefix, label in DIRECTIONS:
        chance = "chance" if section == "text_image" else f"chance_{section}"
        for scoring, source in ((results["mode"] if section == "text_image" else "itc", section),
                                ("chance", chance)):
            if source not in results:
                continue
            values = results[source]
            row = {"retrieval": label, "scoring": scoring}
            row.update({f"R@{k}": values[f"{prefix}_r{k}"] for k in KS})
            row["mean"] = values[f"{prefix}_mean"]
            rows.append(row)
    return rows


class RetrievalEvaluator:
    """Trainer callback: itc recalls on a validation MindRecord; "score" = mean recall of IR and TR."""

    def __init__(self, model, cfg, tokenizer, data_path, batch_size, rank=0, world=1):
        self.cfg, self.tokenizer, self.data_path = cfg, tokenizer, data_path
        self.rank, self.world = rank, world
        self.retriever = RetrievalRunner(model, batch_size)

    def __call__(self, step):
        results = evaluate(None, self.cfg, self.tokenizer, self.data_path, mode="itc", rank=self.rank,
                           world=self.world, retriever=self.retriever)
        metrics = {"score": results["text_image"]["r_mean"]}
        metrics.update({f"{d}_r{k}": results["text_image"][f"{d}_r{k}"] for d in ("ir", "tr") for k in KS})
        return metrics


def default_out_dir(ckpt):
    """<run>/eval_retrieval for a checkpoint <run>/checkpoints/step_N or <run>/best/step_N."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ckpt))), "eval_retrieval")


def query_index(model, cfg, tokenizer, index_path, query, top, retriever=None):
    """The best `top` images of the index at `index_path` for the text `query` (list of dicts); `retriever`
    (e.g. of an export) replaces `model`'s."""
    if not query or not query.strip():
        raise UserError("--index needs a non-empty --query TEXT")
    return query_index_many(model, cfg, tokenizer, index_path, [query], top, retriever)[0]


def query_index_many(model, cfg, tokenizer, index_path, queries, top, retriever=None, batch_size=16):
    """`query_index` of several texts with one model load: embedded `batch_size` at a time; one hit list each."""
    index = load_index(index_path)
    pairs = [tokenizer.encode_padded(q, cfg.model.text.max_len) for q in queries]
    ids, mask = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    retriever = retriever or RetrievalRunner(model, batch_size)
    features = retriever.embed_texts(ids, mask, keep_tokens=False, desc="queries")["features"]
    return search_index(index, features, top)


def read_queries(path):
    """The queries of a UTF-8 text file, one per line; blank lines are skipped (and an empty file is an error)."""
    if not os.path.isfile(path):
        raise UserError(f"--queries {path}: no such file; give a UTF-8 text file with one query per line")
    with open(path, encoding="utf-8") as f:
        queries = [line.strip() for line in f if line.strip()]
    if not queries:
        raise UserError(f"--queries {path} holds no query; write one query per line")
    return queries


def image_sources(data_path, references):
    """Where each record's image came from: its path in the manifest the MindRecord was built from when that
    manifest is still there, else `<mindrecord>#<record index>`."""
    from src.data.manifest import read_manifest
    from src.data.pretrain_data import open_mindrecord

    manifest = open_mindrecord(data_path, None).meta.get("manifest")
    paths = {}
    if manifest and os.path.isfile(manifest):
        paths = {sample["id"]: sample.get("image_path") for sample in read_manifest(manifest)}
    return [paths.get(ref["id"]) or f"{os.path.abspath(data_path)}#{i}" for i, ref in enumerate(references)]


def build_parser():
    parser = docstring_parser(__doc__, "eval.py --task retrieval")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="checkpoint directory (…/checkpoints/step_N or …/best/step_N)")
    source.add_argument("--mindir", metavar="PREFIX", help="run the graphs of export.py instead: its --file_name "
                                                           "PREFIX, PREFIX_export.json or their folder")
    parser.add_argument("--config", default=None, help="run config (default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.workers=1")
    parser.add_argument("--data", default=None, help="MindRecord to evaluate (default: data.test of the config)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="scoring: itc, itm or itc_itm (default: the config's retrieval.mode)")
    parser.add_argument("--k", type=int, default=None, help="itc_itm shortlist size (default: retrieval.k)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="items / pairs per model call (default: retrieval.batch_size)")
    parser.add_argument("--out", default=None, help="results folder (default: <run>/eval_retrieval)")
    parser.add_argument("--index_out", default=None, metavar="FILE", help="also save the image embeddings (npz)")
    parser.add_argument("--index", default=None, metavar="FILE", help="query this index instead of evaluating")
    parser.add_argument("--query", default=None, help="text to search the --index for")
    parser.add_argument("--queries", default=None, metavar="FILE",
                        help="search the --index for every line of this UTF-8 file with one model load; the hits "
                             "go to <out>/query_hits.jsonl")
    parser.add_argument("--top", type=int, default=None, help="images to print for --query (default: retrieval.top)")
    return parser


def towerless_warning(ckpt_path, mode):
    """A warning when `mode` uses the contrastive towers of a converted released OPT checkpoint, which has none
    (src.weights.convert leaves contrastive.* at their initialisation), else None."""
    from src.weights.checkpoint import checkpoint_meta
    meta = checkpoint_meta(ckpt_path)
    if mode == "itm" or not meta.get("converted_from"):
        return None
    return (f"warning: {ckpt_path} is a converted released OPT checkpoint ({meta.get('source')}), which has no "
            f"contrastive towers: the itc scores of --mode {mode} come from untrained projections. Use --mode itm "
            f"(the original's protocol), or add towers first (docs/released_checkpoints.md)")


def setting(args, cfg, name):
    """The command line's value, else retrieval.<name> of the config (defaults in config/defaults.yaml)."""
    value = getattr(args, name)
    return value if value is not None else cfg.retrieval[name]


def main(argv=None, metrics_hooks=()):
    from src.data.tokenizer import Tokenizer
    from src.evaluation.hooks import Evaluation, run_hooks
    from src.engine.context import setup_context
    from src.inference.loading import load_trained_model, resolve_config
    from src.utils.results import markdown_table, write_results

    args = build_parser().parse_args(argv)
    if (args.query is not None or args.queries is not None) and args.index is None:
        raise UserError("--query / --queries need --index FILE (an index written with --index_out)")
    if args.query is not None and args.queries is not None:
        raise UserError("give --query TEXT or --queries FILE, not both")
    queries = read_queries(args.queries) if args.queries else None
    exported = None
    if args.mindir:
        from src.inference.exported_model import ExportedModel
        exported = ExportedModel(args.mindir, "retrieval", args.overrides)
        cfg = exported.cfg
    else:
        cfg = resolve_config(args.ckpt, args.config, args.overrides)
    dist = setup_context(cfg)
    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    model = load_trained_model(cfg, args.ckpt) if exported is None else None
    if args.index and queries:
        batch_size = setting(args, cfg, "batch_size")
        hits = query_index_many(model, cfg, tokenizer, args.index, queries, setting(args, cfg, "top"),
                                exported.retriever(batch_size) if exported else None, batch_size)
        if dist.is_main:
            out = args.out or (default_out_dir(args.ckpt) if args.ckpt else
                               os.path.join(os.path.dirname(os.path.abspath(exported.path)), "eval_retrieval"))
            path = os.path.join(out, "query_hits.jsonl")
            write_jsonl(path, [{"query": q, "hits": h} for q, h in zip(queries, hits)])
            rows = [{"query": q, **hit} for q, h in zip(queries, hits) for hit in h]
            print(markdown_table(rows, ["query", "rank", "score", "id", "image_id", "source"], floatfmt=".4f"),
                  end="")
            print(f"{len(queries)} queries; hits written to {path}")
        return 0
    if args.index:
        hits = query_index(model, cfg, tokenizer, args.index, args.query, setting(args, cfg, "top"),
                           exported.retriever(1) if exported else None)
        if dist.is_main:
            print(markdown_table(hits, ["rank", "score", "id", "image_id", "source"], floatfmt=".4f"), end="")
        return 0
    data = args.data or cfg.data.test
    if not data:
        raise UserError("no evaluation data: pass --data MINDRECORD or set data.test in the config")
    mode, k, batch_size = (setting(args, cfg, name) for name in ("mode", "k", "batch_size"))
    if args.ckpt and dist.is_main:
        warning = towerless_warning(args.ckpt, mode)
        if warning:
            print(warning, file=sys.stderr)
    results = evaluate(model, cfg, tokenizer, data, mode, k, batch_size, dist.rank, dist.world_size,
                       retriever=exported.retriever(batch_size) if exported else None,
                       return_features=bool(args.index_out), return_ranking=bool(metrics_hooks))
    features = results.pop("image_features", None)
    records = results.pop("records", [])
    if not dist.is_main:
        return 0
    source = args.ckpt or exported.path
    results["checkpoint"] = source
    rows = table_rows(results)
    out = args.out or (default_out_dir(args.ckpt) if args.ckpt else
                       os.path.join(os.path.dirname(os.path.abspath(exported.path)), "eval_retrieval"))
    extra = run_hooks(metrics_hooks, Evaluation("retrieval", os.path.basename(data), data, out, dict(results),
                                                records))
    results.update(extra)
    rows += [{"retrieval": name, "scoring": "metrics hook", "mean": value} for name, value in extra.items()]
    json_path, _ = write_results(out, "retrieval", results, rows, TABLE_COLUMNS)
    print(markdown_table(rows, TABLE_COLUMNS), end="")
    audio = f" ({results['n_audio']} with audio: the audio recalls are over those)" if "n_audio" in results else ""
    print(f"{results['n_texts']} captions x {results['n_images']} images{audio}, {results['pairs_scored']} pairs "
          f"through the cross-encoder; results in {json_path}")
    if args.index_out:
        from src.data.pretrain_data import read_references
        refs = read_references(data)
        sources = image_sources(data, refs)
        save_index(args.index_out, features, [r["id"] for r in refs], [r["image_id"] for r in refs], sources,
                   source)
        print(f"image index of {len(refs)} images written to {args.index_out}")
    return 0
