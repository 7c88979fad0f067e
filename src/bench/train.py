"""Training-step throughput: `python scripts/benchmark.py train [--config config/model/base.yaml] [--batch_size 8]`.

Times one pretraining task's step (default MLM over text + image + audio, the full cross-modal sequence) on a real
pipeline batch from generated demo data, split into phases — data (pipeline, per batch), forward + backward, optimizer
update, whole train step — and reports steps/s, samples/s, peak memory (max RSS) and achieved GFLOP/s as a fraction of
the machine's fp32 matmul throughput measured in the same run (2048^3 MatMul in a graph Cell).

FLOPs are counted analytically from the config (matmuls and attention only; one training step = 3x the forward).
"""
import os
import resource
import tempfile
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.bench import print_table
from src.config import load_config
from src.data.build_mindrecord import build_mindrecord
from src.data.demo import generate_demo
from src.data.manifest import read_manifest
from src.data.pipeline import build_pretrain_dataset
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.engine.optim import build_optimizer
from src.engine.train_step import LossScale, TrainStep
from src.models.opt import build_model
from src.tasks.pretrain import build_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def add_arguments(parser):
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "model", "base.yaml"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--task", default="mlm", choices=["mlm", "mvm", "mam", "itm", "itc", "td"])
    parser.add_argument("--vocab_size", type=int, default=21128,
                        help="model vocabulary (the demo text uses the first ids; default bert-base-chinese's size)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    parser.add_argument("--samples", type=int, default=64, help="demo samples generated for the data phase")


def block_flops(tokens, width, ffn, memory=0):
    """Forward FLOPs of one transformer block over `tokens` (+ cross-attention to `memory` tokens if > 0)."""
    flops = 2 * tokens * (4 * width * width + 2 * width * ffn) + 4 * tokens * tokens * width
    if memory:
        flops += 2 * tokens * 2 * width * width + 2 * memory * 2 * width * width + 4 * tokens * memory * width
    return flops


def forward_flops(m, task, max_predictions=8):
    """Forward FLOPs per sample of a pretraining task (matmuls and attention)."""
    t, i, a, c = m.text, m.image, m.audio, m.cross
    n_patch = (i.image_size // i.patch_size) ** 2
    text = t.layers * block_flops(t.max_len, t.hidden, t.ffn)
    image = 2 * n_patch * (i.channels * i.patch_size ** 2) * i.hidden + i.layers * block_flops(n_patch + 1, i.hidden,
                                                                                               i.ffn)
    a_tokens = a.max_frames // a.subsample if a.mode == "mel" else a.max_frames
    audio = a.layers * block_flops(a_tokens, a.hidden, a.ffn)
    if a.mode == "mel":
        frames, channels, convs = a.max_frames, a.n_mels, []
        while frames > a_tokens:
            frames //= 2
            convs.append(2 * frames * channels * 3 * a.hidden)
            channels = a.hidden
        audio += sum(convs) + 2 * a_tokens * channels * a.hidden
    else:
        audio += 2 * a_tokens * a.feature_dim * a.hidden
    seq = t.max_len + n_patch + 1 + a_tokens
    embed = 2 * c.hidden * (t.max_len * t.hidden + (n_patch + 1) * i.hidden + a_tokens * a.hidden)
    cross = c.layers * block_flops(seq, c.hidden, c.ffn)
    encoders = text + image + audio
    if task == "itc":
        return encoders
    total = encoders + embed + cross
    if task == "mlm":
        total += 2 * max_predictions * (c.hidden * t.hidden + t.hidden * t.vocab_size)
    if task in ("mvm", "mam"):
        total += encoders  # the stop-gradient target pass
    if task == "td":
        d = m.text_decoder
        total += 2 * seq * c.hidden * d.hidden + d.layers * block_flops(d.max_len, d.hidden, d.ffn, memory=seq)
        total += 2 * d.max_len * d.hidden * t.vocab_size
    return total


def matmul_roof(size=2048, repeats=10):
    """fp32 GFLOP/s of one large MatMul in a GRAPH_MODE Cell (median of `repeats`)."""
    class MatMul(nn.Cell):
        def construct(self, x, y):
            return ops.matmul(x, y)
    net = MatMul()
    x = ms.Tensor(np.random.default_rng(0).standard_normal((size, size)).astype(np.float32))
    net(x, x).asnumpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x, x).asnumpy()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / float(np.median(times)) / 1e9


def timed(fn, steps):
    fn()  # compile / warm up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(args):
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    roof = matmul_roof()
    with tempfile.TemporaryDirectory(prefix="opt_bench_train_") as tmp:
        cfg = load_config(args.config, [f"train.batch_size={args.batch_size}"])
        generate_demo(os.path.join(tmp, "demo"), args.samples, 0, 0, image_size=64, audio="tones")
        manifest = os.path.join(tmp, "demo", "train.jsonl")
        vocab = os.path.join(tmp, "vocab.txt")
        write_vocab(vocab, build_vocab(manifest_texts(read_manifest(manifest))))
        record = os.path.join(tmp, "train.mindrecord")
        build_mindrecord(manifest, record, vocab, max_frames=cfg.model.audio.max_frames)
        tokenizer = Tokenizer(vocab)
        cfg = cfg.with_updates({"data.vocab": vocab, "model.text.vocab_size": max(args.vocab_size,
                                                                                    tokenizer.vocab_size)})
        dataset = build_pretrain_dataset(record, args.task, cfg, tokenizer, args.batch_size, 0)
        iterator = dataset.create_dict_iterator(num_epochs=-1, output_numpy=True)
        batch = next(iterator)
        data_s = timed(lambda: next(iterator), args.steps)

        model = build_model(cfg.model)
        task = build_task(args.task, model, cfg.pretrain, has_audio="audio" in batch)
        inputs = [ms.Tensor(batch[n]) for n in task.input_names]
        optimizer = build_optimizer(model.trainable_params(), cfg.optim, 1000)
        step = TrainStep(task, optimizer, LossScale("none"), cfg.train.clip_norm)
        step.set_train(True)
        grad = _GradOnly(task, optimizer)
        grads = grad(*inputs)
        update = _UpdateOnly(optimizer)
        fwd_bwd_s = timed(lambda: grad(*inputs)[0].asnumpy(), args.steps)
        optimizer_s = timed(lambda: update(grads).asnumpy(), args.steps)
        step_s = timed(lambda: step(*inputs)[0].asnumpy(), args.steps)
    flops = 3 * forward_flops(cfg.model, args.task, cfg.pretrain.max_predictions) * args.batch_size
    achieved = flops / step_s / 1e9
    results = {
        "benchmark": "train", "config": os.path.relpath(args.config, ROOT), "task": args.task,
        "batch_size": args.batch_size, "parameters": int(sum(p.size for p in model.trainable_params())),
        "steps_per_s": 1.0 / step_s, "samples_per_s": args.batch_size / step_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "train_gflop_per_step": flops / 1e9, "achieved_gflop_s": achieved, "matmul_roof_gflop_s": roof,
        "fraction_of_roof": achieved / roof,
        "phases_ms": {"data": data_s * 1e3, "forward_backward": fwd_bwd_s * 1e3, "optimizer": optimizer_s * 1e3,
                      "train_step": step_s * 1e3},
    }
    rows = [{"phase": k, "ms": v} for k, v in results["phases_ms"].items()]
    print_table(f"{results['config']}, task {args.task}, batch {args.batch_size}: {results['steps_per_s']:.3f} "
                f"steps/s, {results['samples_per_s']:.2f} samples/s, {achieved:.0f} GFLOP/s = "
                f"{100 * results['fraction_of_roof']:.0f}% of the {roof:.0f} GFLOP/s matmul roof, peak RSS "
                f"{results['peak_rss_gb']:.1f} GB", rows, ["phase", "ms"])
    return results


class _GradOnly(nn.Cell):
    def __init__(self, task, optimizer):
        super().__init__(auto_prefix=False)
        self.grad_fn = ms.value_and_grad(task, None, optimizer.parameters)

    def construct(self, *inputs):
        return self.grad_fn(*inputs)[1]


class _UpdateOnly(nn.Cell):
    def __init__(self, optimizer):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer

    def construct(self, grads):
        self.optimizer(grads)
        return self.optimizer.global_step
