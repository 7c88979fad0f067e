"""Training-step throughput: `python scripts/benchmark.py train [--config config/model/base.yaml] [--batch_size 8]`.

Times one pretraining task's step (default MLM over text + image + audio, the full cross-modal sequence) on a real
pipeline batch from generated demo data, split into phases, and reports steps/s, samples/s, peak memory (max RSS of the
train-step process) and achieved GFLOP/s as a fraction of the machine's fp32 matmul throughput measured in the same
run (2048^3 MatMul in a graph Cell, sampled before and after the phases; the higher sample is the roof, so a moment
of contention from other processes does not shrink it). The peak memory of the train step stands next to its analytic
need by the parallel planner's formula (parameters + gradients + AdamW moments + the activations the task's stacks keep
for backward, as parallel.recompute leaves them), with the 1.2 x need + 1 GB target and the planner's CPU estimate
(docs/parallel.md "Device terms"), so the gap shows in every run.

Phases:
- data: ms per batch of the task's pipeline over `--data_batches` batches after two warm-up ones, with short queues
  (prefetch 2) so that batches made ahead do not hide its cost;
- forward_backward: a graph Cell returning `value_and_grad` of the task over every trainable parameter (no optimizer);
- optimizer: a graph Cell running only the optimizer update on fixed gradients;
- train_step: `src.engine.train_step.TrainStep` exactly as the trainer builds it (train.clip_norm, loss scale none,
  train.grad_accumulation = `--accumulation`, default 1).
Each model phase runs in its own process (`--phase`), so one compiled graph's memory never adds to another's (the
base config's forward + backward graph alone reaches about 20 GB RSS at batch 8 on CPU), and each phase's peak RSS is
its own.

FLOPs are counted analytically from the config (matmuls and attention only; one training step = 3x the forward).
"""
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore import nn, ops

from bench import print_table
from src.config import load_config
from src.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_PHASES = ("forward_backward", "optimizer", "train_step")


def add_arguments(parser):
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "model", "base.yaml"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--task", default="mlm", choices=["mlm", "mvm", "mam", "itm", "itc", "td"])
    parser.add_argument("--vocab_size", type=int, default=21128,
                        help="model vocabulary (the demo text uses the first ids; default bert-base-chinese's size)")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="gradient accumulation micro-batches per step (train.grad_accumulation): the batch is "
                             "split into this many equal parts, so a batch that does not fit in memory can still "
                             "be measured; forward+backward is then timed on one part and multiplied")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per phase after one warm-up (default 5)")
    parser.add_argument("--samples", type=int, default=64, help="demo samples generated for the data phase")
    parser.add_argument("--data_batches", type=int, default=20, help="timed batches of the data phase (default 20)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set model.dropout=0 model.attention_dropout=0 (dropout off)")
    parser.add_argument("--phase", choices=MODEL_PHASES, default=None,
                        help="internal: time one model phase on --batch_file and write it to --out")
    parser.add_argument("--batch_file", default=None, help="internal: .npz batch for --phase")


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
    return 2 * size ** 3 / timed(lambda: net(x, x).asnumpy(), repeats) / 1e9


def timed(fn, steps):
    """Median seconds of `steps` calls of fn after one untimed call (compile / warm-up)."""
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_rss_gb():
    """Peak resident memory of this process in GB (1e9 bytes): VmHWM of /proc/self/status, the high-water mark of this
    program's own memory. ru_maxrss is not used where VmHWM exists: Linux carries it across exec, so a phase process
    started by a large parent (a test run holding many GB) would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def model_config(args):
    return load_config(args.config, [f"train.batch_size={args.batch_size}", f"model.text.vocab_size={args.vocab_size}",
                                     *args.overrides])


def run(args):
    if args.accumulation < 1 or args.batch_size % args.accumulation:
        raise UserError(f"--batch_size {args.batch_size} must be a positive multiple of --accumulation "
                        f"{args.accumulation}")
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.phase:
        return run_phase(args)
    roof_samples = [matmul_roof()]
    cfg = model_config(args)
    with tempfile.TemporaryDirectory(prefix="opt_bench_train_") as tmp:
        batch_file = os.path.join(tmp, "batch.npz")
        data_s, vocab_size = time_data(args, cfg, tmp, batch_file)
        args.vocab_size = max(args.vocab_size, vocab_size)
        cfg = model_config(args)
        phases = {phase: run_phase_process(args, phase, batch_file, tmp) for phase in MODEL_PHASES}
    roof_samples.append(matmul_roof())
    roof = max(roof_samples)
    step = phases["train_step"]
    step_s = step["seconds"]
    flops = 3 * forward_flops(cfg.model, args.task, cfg.pretrain.max_predictions) * args.batch_size
    achieved = flops / step_s / 1e9
    results = {
        "benchmark": "train", "config": os.path.relpath(args.config, ROOT), "task": args.task,
        "overrides": list(args.overrides), "optimizer_kernel": step["optimizer_kernel"],
        "batch_size": args.batch_size, "accumulation": args.accumulation, "parameters": step["parameters"],
        "steps_per_s": 1.0 / step_s, "samples_per_s": args.batch_size / step_s,
        "peak_rss_gb": step["peak_rss_gb"],
        "train_gflop_per_step": flops / 1e9, "achieved_gflop_s": achieved, "matmul_roof_gflop_s": roof,
        "matmul_roof_samples": roof_samples, "fraction_of_roof": achieved / roof,
        "phases_ms": {"data": data_s * 1e3, **{p: phases[p]["seconds"] * 1e3 for p in MODEL_PHASES}},
        "phase_peak_rss_gb": {p: phases[p]["peak_rss_gb"] for p in MODEL_PHASES},
        "analytic_need_gb": step["analytic_need_gb"],
        "load_average": os.getloadavg(),
    }
    rows = [{"phase": k, "ms": v, "peak_rss_gb": results["phase_peak_rss_gb"].get(k)}
            for k, v in results["phases_ms"].items()]
    need = step["analytic_need_gb"]
    settings = "".join(f", {o}" for o in args.overrides) + f", {step['optimizer_kernel']} AdamW kernel"
    print_table(f"{results['config']}{settings}, task {args.task}, batch {args.batch_size} in {args.accumulation} "
                f"micro-batch(es): {results['steps_per_s']:.3f} "
                f"steps/s, {results['samples_per_s']:.2f} samples/s, {achieved:.0f} GFLOP/s = "
                f"{100 * results['fraction_of_roof']:.0f}% of the {roof:.0f} GFLOP/s matmul roof; peak RSS "
                f"{results['peak_rss_gb']:.1f} GB against an analytic need of {need['total']:.1f} GB "
                f"({results['peak_rss_gb'] / need['total']:.2f}x)", rows, ["phase", "ms", "peak_rss_gb"])
    print_table("Analytic need of the train step (GB; src.engine.parallel.estimate_memory, fp32, one device; "
                "target: a peak within 1.2x the need + 1 GB of runtime)",
                [need],
                ["weights", "gradients", "optimizer", "activations", "total", "target", "cpu_estimate"],
                floatfmt=".2f")
    return results


def time_data(args, cfg, tmp, batch_file):
    """Build demo data, time the task pipeline (seconds per batch), save one batch to `batch_file`; returns
    (seconds, tokenizer vocabulary size)."""
    from demo.data import generate_demo
    from src.data.build_mindrecord import build_mindrecord
    from src.data.manifest import read_manifest
    from src.data.pretrain_data import build_pretrain_dataset
    from src.data.tokenizer import Tokenizer
    from src.data.vocab import build_vocab, manifest_texts, write_vocab

    generate_demo(os.path.join(tmp, "demo"), args.samples, 0, 0, image_size=max(32, cfg.model.image.image_size),
                  audio="tones")
    manifest = os.path.join(tmp, "demo", "train.jsonl")
    vocab = os.path.join(tmp, "vocab.txt")
    write_vocab(vocab, build_vocab(manifest_texts(read_manifest(manifest))))
    record = os.path.join(tmp, "train.mindrecord")
    build_mindrecord(manifest, record, vocab, max_frames=cfg.model.audio.max_frames)
    tokenizer = Tokenizer(vocab)
    cfg = cfg.with_updates({"data.vocab": vocab})
    default_prefetch = ds.config.get_prefetch_size()
    ds.config.set_prefetch_size(2)
    try:
        dataset = build_pretrain_dataset(record, args.task, cfg, tokenizer, args.batch_size, 0).repeat()
        iterator = dataset.create_dict_iterator(num_epochs=1, output_numpy=True)
        np.savez(batch_file, **next(iterator))
        next(iterator)
        start = time.perf_counter()
        for _ in range(args.data_batches):
            next(iterator)
        seconds = (time.perf_counter() - start) / args.data_batches
    finally:
        ds.config.set_prefetch_size(default_prefetch)
    return seconds, tokenizer.vocab_size


def run_phase_process(args, phase, batch_file, tmp):
    """Run one model phase in a fresh process; returns its results dict."""
    out = os.path.join(tmp, f"{phase}.json")
    command = [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "train", "--phase", phase,
               "--batch_file", batch_file, "--out", out, "--config", args.config, "--batch_size",
               str(args.batch_size), "--task", args.task, "--vocab_size", str(args.vocab_size), "--steps",
               str(args.steps), "--accumulation", str(args.accumulation)]
    if args.overrides:
        command += ["--set", *args.overrides]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark phase {phase} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def run_phase(args):
    """Time one model phase (see the module docstring) on the batch in --batch_file."""
    from src.engine.optim import build_optimizer
    from src.engine.parallel import prepare_model
    from src.engine.train_step import LossScale, TrainStep
    from src.engine.trainer import apply_dropout_masks
    from src.models.opt import build_model
    from src.tasks.pretrain import build_task

    cfg = model_config(args)
    with np.load(args.batch_file) as saved:
        batch = dict(saved)
    model = build_model(cfg.model)
    task = build_task(args.task, model, cfg.pretrain, has_audio="audio" in batch)
    apply_dropout_masks(cfg, [model, task], 0)  # the dropout kernels the trainer runs (train.dropout_masks)
    prepare_model(cfg, model)  # parallel.recompute marks every transformer block for recompute, as in the trainer
    task.set_train(True)
    inputs = [ms.Tensor(batch[n]) for n in task.input_names]
    optimizer = build_optimizer(model.trainable_params(), cfg.optim, 1000)
    if args.phase == "forward_backward":
        grad = _GradOnly(task, optimizer)
        part = [x[:args.batch_size // args.accumulation] for x in inputs]
        seconds = args.accumulation * timed(lambda: grad(*part)[0].asnumpy(), args.steps)
    elif args.phase == "optimizer":
        grads = tuple(ms.Tensor(np.full(p.shape, 1e-3, np.float32)) for p in optimizer.parameters)
        update = _UpdateOnly(optimizer)
        seconds = timed(lambda: update(grads).asnumpy(), args.steps)
    else:
        step = TrainStep(task, optimizer, LossScale("none"), cfg.train.clip_norm, args.accumulation)
        step.set_train(True)
        seconds = timed(lambda: step(*inputs)[0].asnumpy(), args.steps)
    print(f"{args.phase}: {seconds * 1e3:.1f} ms")
    return {"phase": args.phase, "seconds": seconds, "peak_rss_gb": peak_rss_gb(),
            "optimizer_kernel": optimizer.kernel_choice[0],
            "parameters": int(sum(p.size for p in model.trainable_params())),
            "analytic_need_gb": analytic_need_gb(model, cfg, args.task, args.batch_size, args.accumulation)}


# the decoder a pre-training task trains (the others are not run by its step)
TASK_DECODER = {"td": "text decoder", "id": "image decoder"}


def analytic_need_gb(model, cfg, task, batch_size, accumulation):
    """What one fp32 training step holds, by the parallel planner's formula (src.engine.parallel.estimate_memory at
    dp = mp = 1): the physical need (weights, gradients, AdamW moments and the activations the task's stacks keep for
    backward, as on a device with no terms of its own) and the planner's CPU estimate (the CPU runtime, activation
    factor, logit and dropout-mask terms; docs/parallel.md "Device terms")."""
    from src.engine.parallel import (dropout_setting, estimate_memory, split_parameter_counts, token_counts,
                                     transformer_stacks)
    stacks = [s for s in transformer_stacks(cfg.model, *token_counts(cfg.model))
              if s.group in ("encoders", TASK_DECODER.get(task))]
    sharded, replicated = split_parameter_counts(model, {})

    def estimate(device):
        return estimate_memory(sharded, replicated, stacks, 1, 1, batch_size, accumulation, dtype="fp32",
                               device=device, dropout=dropout_setting(cfg))
    need, cpu = estimate("ascend"), estimate("cpu")   # ascend's device terms are zero: the physical need
    recompute = bool(cfg.parallel.recompute)   # the stacks then keep each block's input and one block's activations
    parts = {"weights": need.weights, "gradients": need.grads, "optimizer": need.optimizer,
             "activations": need.activations_recompute if recompute else need.activations}
    total = need.total(recompute) / 1e9
    return {**{k: v / 1e9 for k, v in parts.items()}, "total": total, "target": 1.2 * total + 1.0,
            "cpu_estimate": cpu.total(recompute) / 1e9}


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
