"""Data pipeline throughput: samples/s of each pretraining task's batches, and of a task mix, on demo data.

Generates a demo set (or reads --data), builds its vocabulary and MindRecord in a temporary folder, then times the
pipelines of `src.data.pretrain_data` on the model config (default: small) after a warm-up. The queues between pipeline
stages are kept short (--prefetch) so that batches made ahead during the warm-up do not inflate the timed rate; the
mix draws each batch's task by the pretrain.tasks ratios, with one pipeline per task running side by side.
"""
import itertools
import os
import tempfile
import time

import mindspore.dataset as ds
import numpy as np

from bench import print_table
from demo.data import generate_demo
from src.config import load_config
from src.data.build_mindrecord import build_mindrecord
from src.data.manifest import read_manifest
from src.data.pretrain_data import PRETRAIN_TASKS, build_pretrain_dataset, open_mindrecord, task_requirements
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIX = "mix"


def add_arguments(parser):
    parser.add_argument("--data", default=None,
                        help="demo data folder holding train.jsonl (default: generate one in a temporary folder)")
    parser.add_argument("--samples", type=int, default=512, help="training samples to generate (default 512)")
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "model", "small.yaml"),
                        help="config giving the model shapes and pretrain settings (default: the small model)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="pipeline and MindRecord-build workers (default 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row (default 30)")
    parser.add_argument("--prefetch", type=int, default=2,
                        help="queue size between pipeline stages while timing (MindSpore's default is 16)")
    parser.add_argument("--tasks", nargs="+", choices=PRETRAIN_TASKS, default=None,
                        help="tasks to time (default: every task the data can feed), plus their mix")


def run(args):
    if args.batches < 1 or args.warmup < 0 or args.prefetch < 1 or args.samples < args.batch_size:
        raise UserError("need --batches >= 1, --warmup >= 0, --prefetch >= 1 and --samples >= --batch_size")
    base = load_config(args.config, [f"data.workers={args.workers}"])
    with tempfile.TemporaryDirectory(prefix="opt_bench_data_") as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = os.path.join(tmp, "demo")
            generate_demo(data_dir, args.samples, 0, 0, image_size=max(32, base.model.image.image_size),
                          audio="tones", workers=args.workers)
        manifest = os.path.join(data_dir, "train.jsonl")
        vocab = os.path.join(tmp, "vocab.txt")
        write_vocab(vocab, build_vocab(manifest_texts(read_manifest(manifest))))
        record = os.path.join(tmp, "train.mindrecord")
        start = time.perf_counter()
        report = build_mindrecord(manifest, record, vocab, workers=args.workers)
        build_seconds = time.perf_counter() - start
        tokenizer = Tokenizer(vocab)
        cfg = base.with_updates({"model.text.vocab_size": tokenizer.vocab_size, "data.vocab": vocab})
        tasks = args.tasks or _feedable_tasks(open_mindrecord(record, vocab).meta, cfg)

        def batches(task):
            return _endless_batches(record, task, cfg, tokenizer, args.batch_size)

        default_prefetch = ds.config.get_prefetch_size()
        ds.config.set_prefetch_size(args.prefetch)
        try:
            rows = [_timed(task, [batches(task)], [0] * (args.warmup + args.batches), args) for task in tasks]
            ratios = np.array([max(cfg.pretrain.tasks[task], 0.0) for task in tasks]) + 1e-12
            schedule = np.random.default_rng(0).choice(len(tasks), size=args.warmup + args.batches,
                                                       p=ratios / ratios.sum())
            rows.append(_timed(MIX, [batches(task) for task in tasks], schedule, args))
        finally:
            ds.config.set_prefetch_size(default_prefetch)
    results = {
        "benchmark": "data", "config": os.path.relpath(args.config, ROOT), "samples": report["accepted"],
        "batch_size": args.batch_size, "workers": args.workers, "warmup_batches": args.warmup,
        "prefetch": args.prefetch,
        "build_mindrecord": {"seconds": round(build_seconds, 3),
                             "samples_per_s": round(report["accepted"] / build_seconds, 1)},
        "pipelines": rows,
    }
    title = (f"MindRecord build: {report['accepted']} samples in {build_seconds:.1f} s; pipelines, batch "
             f"{args.batch_size}, {args.workers} workers:")
    print_table(title, rows, ["task", "batches", "samples_per_s", "ms_per_batch"])
    return results


def _feedable_tasks(meta, cfg):
    """The pretraining tasks the data can feed (audio tasks need audio, image decoding needs image tokens)."""
    has = {"audio": meta["has_audio"] and cfg.data.use_audio, "image_tokens": meta["has_image_tokens"]}
    return [task for task in PRETRAIN_TASKS if all(has[need] for need in task_requirements(task))]


def _endless_batches(record, task, cfg, tokenizer, batch_size):
    """Batches of `task`, epoch after epoch."""
    for epoch in itertools.count():
        data = build_pretrain_dataset(record, task, cfg, tokenizer, batch_size, epoch)
        yield from data.create_tuple_iterator(num_epochs=1, output_numpy=True)


def _timed(name, streams, schedule, args):
    """Take one batch from streams[k] for each k of `schedule`; time all but the first `args.warmup` batches."""
    for stream in streams:  # start every pipeline before the warm-up
        next(stream)
    for k in schedule[: args.warmup]:
        next(streams[k])
    start = time.perf_counter()
    for k in schedule[args.warmup:]:
        next(streams[k])
    seconds = time.perf_counter() - start
    count = len(schedule) - args.warmup
    return {"task": name, "batches": count, "samples_per_s": round(count * args.batch_size / seconds, 1),
            "ms_per_batch": round(1000 * seconds / count, 2)}
