"""The training loop shared by the trainers: per-task train steps over one model and one optimizer, a task mixer,
per-task data streams, logging, checkpoints and resume.

A run's output folder (`run.output_dir`) holds config.yaml (resolved), metrics.jsonl, checkpoints/step_*/ and
summary.json / summary.md. Resume (`checkpoint.resume`) restores the model, the optimizer moments and step (and so the
LR position), the loss scale, each task's data position and the loss statistics; the task of each step and every batch
are pure functions of (seed, step) and (seed, epoch, sample index), so the resumed run continues exactly as the
uninterrupted one would have.
"""
import errno
import hashlib
import json
import math
import os
import shutil
import time

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from tqdm import tqdm

from src.config import save_config
from src.engine.distributed import all_gather_numpy
from src.engine.parallel import check_dropout_masks, prepare_model
from src.engine.optim import LR_PARAM, apply_lr, build_optimizer, select_trainable
from src.engine.run_log import LossTracker, MetricsLog
from src.engine.train_step import LossScale, TrainStep
from src.errors import UserError
from src.native.kernels import kernel_threads, keyed_dropout_op, native_kernels_usable
from src.utils.progress import progress
from src.utils.results import markdown_table, write_results
from src.weights.checkpoint import (CheckpointManager, capture_rng_state, init_from_checkpoint, load_checkpoint,
                                    load_into, restore_rng_state)
from src.weights.pretrained import init_from_pretrained, pretrained_sources


DROPOUT_STEP = "dropout_step"   # the step counter the dropout masks are drawn from; set every step, never saved
HOST_SET = (DROPOUT_STEP, LR_PARAM)  # Parameters the trainer sets before every step: never saved, ignored on load


def _mix32(h):
    """Two xor-shift-multiply rounds and a final xor-shift over int32 (wrapping): a 32-bit integer hash of each
    element."""
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16)) * 73244475
    h = ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16)) * 73244475
    return ops.bitwise_xor(h, ops.bitwise_right_shift(h, 16))


class StepDropout(nn.Cell):
    """Drop-in for the kernel of an `nn.Dropout` (returns (output, mask)) whose mask is a pure function of
    (salt, training step, element index). MindSpore's own Dropout kernel keeps its generator state inside the kernel,
    where no checkpoint can reach it, so a resumed run would draw other masks; with this one a resumed run draws
    exactly the masks of the uninterrupted run. The micro-batches of one step (train.grad_accumulation) share their
    masks.

    The mask (`draw_mask`): view the tensor as rows by its last axis. Every row r and every column c gets an odd
    32-bit key, an integer hash of (salt, step, r) and of (salt, step, c) over those short vectors; element (r, c) is
    kept when the wrapped product key_r * key_c, read as a signed int32, is below keep_prob * 2^32 - 2^31. The product
    of two independent uniform odd keys is uniform, and the top bits of k * u for a fixed odd k are unrelated to those
    of u, so rows, columns and steps draw independent-looking masks (tests/unit/test_lean_layers.py checks the pair
    statistics against the binomial).
    On CPU, when the native kernels build (src/native), the mask is never formed: construct runs
    src/native/keyed_dropout.cc, which applies the mask element by element from the keys (`mask_keys`), and its
    backward is the same kernel on the gradient, so a dropout layer keeps nothing for the backward; attention takes the
    keys too (src.models.layers.NativeAttentionCore). The second output is then a one-element stand-in (`draw_mask`
    gives the mask). Elsewhere the mask is drawn (`draw_mask`) and kept as 1 byte per element for the backward (dx =
    dout * mask / keep_prob, MaskedScale). It is written for memory: every full-size integer addition or
    multiplication holds buffers of several times the tensor's size per layer on CPU (bitwise operations and
    comparisons do not; docs/experiments/2026-12-07-step-dropout-masks.md), so the one full-size product is an int32
    outer-product MatMul, (rows, 1) x (1, columns), which wraps like the elementwise product; on other devices the
    product is the elementwise one (their MatMul kernels are not meant for int32); the masks are the same. One layer
    called twice in a step would draw the same mask twice: each call site of the model's blocks has its own dropout
    layer (src.models.layers.dropout_layer)."""

    def __init__(self, keep_prob, salt, counter):
        super().__init__()
        self.keep_prob, self.salt, self.counter = float(keep_prob), int(salt), counter
        self.threshold = min(int(round(self.keep_prob * 2.0 ** 32)) - 2 ** 31, 2 ** 31 - 1)   # an int32
        self.threshold_tensor = ms.Tensor(np.array([self.threshold], np.int32))
        self.outer_product_by_matmul = ms.get_context("device_target") == "CPU"
        self.apply_mask = MaskedScale(self.keep_prob)
        self.keyed_dropout = None
        if native_kernels_usable("keyed_dropout"):
            self.keyed_dropout = keyed_dropout_op()
            self.fixed = ms.Tensor(np.array([1.0 / self.keep_prob, kernel_threads()], np.float32))
            self.no_mask = ms.Tensor(np.ones((1,), np.bool_))

    def mask_keys(self, shape):
        """(row keys, column keys, threshold) of this layer's and step's mask for a tensor of `shape`: int32 tensors
        of the tensor's rows (all axes but the last, flattened), of its last axis, and [threshold]."""
        width = shape[-1]
        rows = 1
        for size in shape[:-1]:
            rows *= size
        key = self.counter * 1013904223 + self.salt
        row_keys = _mix32(ops.bitwise_xor(ops.arange(0, rows, dtype=ms.int32) * 747796405, key))
        column_keys = _mix32(ops.bitwise_xor(ops.arange(0, width, dtype=ms.int32) * 277803737, key * 69069 + 12345))
        return ops.bitwise_or(row_keys, 1), ops.bitwise_or(column_keys, 1), self.threshold_tensor

    def draw_mask(self, shape):
        """The bool keep-mask of this layer and step for a tensor of `shape`."""
        row_keys, column_keys, _ = self.mask_keys(shape)
        rows, width = row_keys.shape[0], column_keys.shape[0]
        if self.outer_product_by_matmul:
            product = ops.matmul(row_keys.reshape(rows, 1), column_keys.reshape(1, width)).reshape(shape)
        else:
            product = row_keys.reshape(tuple(shape[:-1]) + (1,)) * column_keys
        return product < self.threshold

    def construct(self, x):
        if self.keyed_dropout is not None:   # the op's own backward applies it to the gradient
            # the mask is never formed here (nn.Dropout does not read it; draw_mask gives it); a 1-element stand-in
            return self.keyed_dropout(x, *self.mask_keys(x.shape), self.fixed), self.no_mask
        mask = self.draw_mask(x.shape)
        return self.apply_mask(x, mask), mask


class MaskedScale(nn.Cell):
    """x * mask / keep_prob whose backward is dout * mask / keep_prob, from the 1-byte mask (x is not kept)."""

    def __init__(self, keep_prob):
        super().__init__()
        self.inverse = 1.0 / keep_prob

    def construct(self, x, mask):
        return x * (mask.astype(x.dtype) * self.inverse)

    def bprop(self, x, mask, out, dout):
        return dout * (mask.astype(dout.dtype) * self.inverse), ops.zeros_like(mask)


def use_step_dropout(cells, seed, rank):
    """Give every `nn.Dropout` (p > 0) inside `cells` a StepDropout kernel; returns the shared step counter (a
    Parameter the trainer sets to the step before running it), or None when there is no dropout. The salt differs per
    dropout layer, seed and rank (the ranks see other samples, so they draw other masks)."""
    counter = Parameter(ms.Tensor(np.array(0, np.int32)), name=DROPOUT_STEP, requires_grad=False)
    seen, found = set(), 0
    for cell in cells:
        for _, sub in cell.cells_and_names():
            if not isinstance(sub, nn.Dropout) or id(sub) in seen:
                continue
            seen.add(id(sub))
            drop = sub.p if sub.p is not None else 1.0 - sub.keep_prob
            if drop > 0:
                found += 1
                salt = (seed * 1000003 + rank * 7919 + found * 104729) % (2 ** 31)
                sub.dropout = StepDropout(1.0 - drop, salt, counter)
    counter.name = DROPOUT_STEP   # PyNative renames a Parameter set on a cell after its attribute (dropout.counter)
    return counter if found else None


def apply_dropout_masks(cfg, cells, rank):
    """Choose how the dropout layers of `cells` draw their masks (train.dropout_masks): `step` gives them StepDropout
    kernels and returns the step counter the trainer sets before every step (None without dropout); `kernel` keeps
    MindSpore's own Dropout kernel and returns None."""
    if check_dropout_masks(cfg.train.dropout_masks) == "step":
        return use_step_dropout(cells, cfg.run.seed, rank)
    return None


class TrainingState(nn.Cell):
    """Everything a checkpoint holds: model, optimizer state, loss-scale state (parameter names unchanged), without
    the Parameters the trainer sets from the step (HOST_SET)."""

    def __init__(self, model, optimizer, loss_scale):
        super().__init__(auto_prefix=False)
        self.model, self.optimizer, self.loss_scale = model, optimizer, loss_scale

    def tensors(self):
        return {p.name: p for p in self.get_parameters() if p.name not in HOST_SET}


class DataStream:
    """Endless batches of one task: epoch after epoch, resumable at (epoch, batch)."""

    def __init__(self, make_dataset, epoch=0, batch=0):
        self.make_dataset, self.epoch, self.batch = make_dataset, epoch, batch
        self._iterator = None

    def _open(self):
        self._iterator = self.make_dataset(self.epoch, self.batch).create_dict_iterator(num_epochs=1,
                                                                                        output_numpy=True)

    def next(self):
        if self._iterator is None:
            self._open()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._open()
            batch = next(self._iterator)
        self.batch += 1
        return batch

    def state(self):
        return {"epoch": self.epoch, "batch": self.batch}


# (key, smallest valid value) of the integer counts a training run uses
COUNTS = (("train.steps", 1), ("train.batch_size", 1), ("train.grad_accumulation", 1), ("train.eval_every", 0),
          ("train.loss_scale_window", 1), ("checkpoint.every", 1), ("checkpoint.keep_last", 1),
          ("run.log_every", 1), ("data.workers", 1))


def check_counts(cfg):
    """UserError naming the first count of `cfg` (COUNTS) that is not an integer at least its minimum."""
    for key, smallest in COUNTS:
        section, name = key.split(".")
        if section not in cfg or name not in cfg[section]:
            continue
        value = cfg[section][name]
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise UserError(f"{key}={value!r} must be an integer >= {smallest}")


def check_writable(folder, needed_bytes=0):
    """UserError (one line) when `folder` cannot be created or written, or its disk has less than `needed_bytes`
    free; called before anything is compiled, so a bad output folder costs seconds, not a compile."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as err:
        raise UserError(f"cannot write to the output folder {folder}: {err.strerror or err}; choose another "
                        "run.output_dir (or checkpoint.dir) or fix its permissions") from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise UserError(f"the disk of {folder} has {free / 2 ** 20:.0f} MiB free but one checkpoint needs about "
                        f"{needed_bytes / 2 ** 20:.0f} MiB; free some space or choose another run.output_dir")


def write_error(what, path, err):
    """A UserError for an OSError met while writing `what` to `path` (disk full, permissions, ...)."""
    reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return UserError(f"cannot write {what} to {path}: {reason}; free space or fix the folder, then resume with "
                     "checkpoint.resume=auto")


def checkpoint_dir(cfg):
    """The run's one checkpoint folder: `checkpoint.dir`, else `<run.output_dir>/checkpoints`."""
    return cfg.checkpoint.dir or os.path.join(cfg.run.output_dir, "checkpoints")


def agreed_resume(ckpt_cfg, manager, gather=all_gather_numpy):
    """`resolve_resume` on every rank, checked to give the same step everywhere (one collective).

    A rank that resolves another step (e.g. its own, unshared checkpoint folder) or fails to resolve makes every rank
    raise a UserError naming the ranks and their steps, instead of some ranks resuming and others starting over while
    they average gradients together.
    """
    problem, path, step = None, None, 0
    try:
        path = resolve_resume(ckpt_cfg, manager)
        step = _checkpoint_step(path) if path else 0
    except (UserError, OSError, ValueError, KeyError) as err:
        problem = err if isinstance(err, UserError) else UserError(f"checkpoint.resume: cannot read {path}: {err}")
        step = -1
    steps = [int(s[0]) for s in gather(np.array([step], np.int64))]
    if problem is not None:
        raise problem
    if len(set(steps)) > 1:
        listed = ", ".join(f"rank {r}: " + ("error" if s < 0 else f"step {s}" if s else "no checkpoint")
                           for r, s in enumerate(steps))
        raise UserError(f"checkpoint.resume={ckpt_cfg.resume}: the ranks disagree on where to resume ({listed}); "
                        f"every rank must see the same checkpoint folder ({manager.directory}): put checkpoint.dir "
                        "(or run.output_dir) on storage all servers share, or copy the checkpoint to every server")
    return path


def _checkpoint_step(path):
    """The step recorded in a checkpoint directory's state.json (0 for a plain weights file)."""
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        return 0
    with open(state, encoding="utf-8") as f:
        return int(json.load(f)["step"])


def resolve_resume(ckpt_cfg, manager):
    if not ckpt_cfg.resume:
        return None
    if ckpt_cfg.resume == "auto":
        path = manager.latest_valid()
        if path is None and manager.list():
            raise UserError(f"checkpoint.resume=auto: every checkpoint in {manager.directory} is corrupt or "
                            "truncated; remove them to start from scratch, or resume from a copy elsewhere")
        return path
    if not os.path.exists(ckpt_cfg.resume):
        raise UserError(f"checkpoint.resume: {ckpt_cfg.resume} does not exist; give a checkpoint directory "
                        "(…/checkpoints/step_XXXXXXXX) or 'auto'")
    return ckpt_cfg.resume


class Trainer:
    """Runs `cfg.train.steps` optimizer steps over the task Cells in `tasks` ({name: Cell with input_names}), drawing
    the task of each step from `mixer` and its batch from `streams[name]` (a function (epoch, start_batch) ->
    dataset)."""

    def __init__(self, cfg, dist, model, tasks, mixer, datasets, samples_per_step, evaluator=None):
        self.cfg, self.dist, self.model, self.mixer = cfg, dist, model, mixer
        check_counts(cfg)
        t = cfg.train
        if t.batch_size % t.grad_accumulation:
            raise UserError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accumulation "
                            f"{t.grad_accumulation}")
        prepare_model(cfg, model)  # shard strategies and recompute of cfg.parallel, before the optimizer exists
        self.dropout_step = apply_dropout_masks(cfg, [model, *tasks.values()], dist.rank)
        self.optimizer = build_optimizer(select_trainable(model.trainable_params(), t.freeze), cfg.optim, t.steps)
        self.loss_scale = LossScale(t.loss_scale, t.loss_scale_init, t.loss_scale_factor, t.loss_scale_window)
        self.steps = {}
        for name, task in tasks.items():
            step = TrainStep(task, self.optimizer, self.loss_scale, t.clip_norm, t.grad_accumulation)
            step.set_train(True)
            self.steps[name] = step
        self.input_names = {name: task.input_names for name, task in tasks.items()}
        self.state = TrainingState(model, self.optimizer, self.loss_scale)
        self.datasets = datasets
        self.samples_per_step = samples_per_step
        self.out_dir = cfg.run.output_dir
        self.manager = CheckpointManager(checkpoint_dir(cfg), cfg.checkpoint.keep_last, cfg.checkpoint.format)
        self.tracker = LossTracker()
        self.start_step, self.streams = 0, {}
        self.skipped = 0
        # evaluator(step) -> dict with a "score" (higher is better); run every train.eval_every steps and at the end;
        # the best-scoring weights are kept in <output_dir>/best/ (model only) with best/metrics.json
        self.evaluator = evaluator
        self.best_score = None
        self.evaluations = []
        self.compile_s = {}
        self.compile_cache = None  # the compile-cache folder, when the launcher enabled one (for the summary)

    def restore(self):
        """Resume from checkpoint.resume, or initialise the model from public pre-trained encoders
        (checkpoint.init_text / init_image / init_towers; the load report goes to run.output_dir/load_report.*) or
        from checkpoint.init; returns a notice or None."""
        ckpt = self.cfg.checkpoint
        path = agreed_resume(ckpt, self.manager)
        positions = {}
        if path:
            tensors, meta = load_checkpoint(path)
            load_into(self.state, tensors, strict=not ckpt.allow_missing_keys, ignore=HOST_SET, source=path)
            self.start_step = int(meta["step"])
            positions = meta.get("data", {})
            self.tracker.restore(meta.get("losses", {}))
            self.skipped = int(meta.get("skipped_steps", 0))
            restore_rng_state(meta.get("rng", {}))
            self.best_score = meta.get("best_score")
            self.evaluations = list(meta.get("evaluations", []))
            notice = f"resumed from {path} at step {self.start_step}"
        else:
            # resume=auto without a checkpoint yet is a first start: it initialises like one
            notices = ["checkpoint.resume=auto: no checkpoint yet, starting at step 0"] if ckpt.resume == "auto" else []
            if pretrained_sources(ckpt):
                report = init_from_pretrained(self.model, self.cfg)
                notices.append(report.summary())
                if self.dist.is_main:
                    notices[-1] += f" (load report: {report.write(self.out_dir)[0]})"
            elif ckpt.init:
                missing = init_from_checkpoint(self.model, ckpt.init, ckpt.allow_missing_keys)
                notices.append(f"model initialised from {ckpt.init}" + (
                    f" ({len(missing)} parameters kept their fresh initialisation)" if missing else ""))
            notice = "; ".join(notices) or None
        for name in self.steps:
            pos = positions.get(name, {"epoch": 0, "batch": 0})
            self.streams[name] = DataStream(self.datasets[name], pos["epoch"], pos["batch"])
        return notice

    def checkpoint_bytes(self):
        """Bytes of one training checkpoint (every tensor of the training state)."""
        return sum(p.size * p.itemsize for p in self.state.get_parameters())

    def graph_signature(self):
        """What the built cells, rather than the config, decide about the compiled graphs, for the compile-cache key
        (src.engine.context.enable_compile_cache): each task's Cell class and input names (they follow e.g. whether
        the data has audio, or the caption stage) and the name, shape and dtype of every training-state Parameter
        (e.g. the vocabulary size), and what of the validation data shapes the evaluator's graphs (its
        `graph_signature`, e.g. the number of candidate answers). Reads no data."""
        tasks = {name: [type(step.network).__qualname__, list(self.input_names[name])]
                 for name, step in self.steps.items()}
        shapes = "\n".join(f"{p.name} {tuple(p.shape)} {p.dtype}" for p in self.state.get_parameters())
        return {"tasks": tasks, "parameters_sha256": hashlib.sha256(shapes.encode("utf-8")).hexdigest(),
                "evaluator": self.evaluator and getattr(self.evaluator, "graph_signature",
                                                        type(self.evaluator).__qualname__)}

    def compile_steps(self):
        """Compile every task's train step, in the fixed order of `tasks`, on a batch of its data.

        MindSpore's compile cache (src.engine.context.enable_compile_cache) numbers graphs by the order they are
        compiled in; compiling lazily at each task's first step would give a resumed run, whose first task can
        differ, another task's cached graph. Returns and keeps {task: seconds} of each compile (or cache load).
        """
        self.compile_s = {}
        for name, step in self.steps.items():
            batch = next(self.datasets[name](0, 0).create_dict_iterator(num_epochs=1, output_numpy=True))
            inputs = [ms.Tensor(batch[n]) for n in self.input_names[name]]
            started = time.time()
            step.compile(*inputs)
            self.compile_s[name] = round(time.time() - started, 3)
        return self.compile_s

    def save(self, step):
        if not self.dist.is_main:
            return None
        meta = {"data": {n: s.state() for n, s in self.streams.items()}, "losses": self.tracker.state(),
                "skipped_steps": self.skipped, "rng": capture_rng_state(), "best_score": self.best_score,
                "evaluations": self.evaluations}
        try:
            return self.manager.save(step, self.state.tensors(), meta)
        except OSError as err:
            raise write_error(f"the checkpoint of step {step}", self.manager.directory, err) from None

    def run(self):
        cfg, main = self.cfg, self.dist.is_main
        notice = self.restore()
        if main:  # a bad output folder or a full disk: one line now, not a traceback after compiling
            check_writable(self.out_dir)
            check_writable(self.manager.directory, self.checkpoint_bytes())
            save_config(cfg, self.out_dir)
        self.compile_steps()
        log = MetricsLog(self.out_dir, main, resume_step=self.start_step)
        total, every = cfg.train.steps, cfg.checkpoint.every
        bar = progress(range(self.start_step, total), initial=self.start_step, total=total, disable=not main,
                   desc="train", dynamic_ncols=True)
        if notice and main:
            tqdm.write(notice)
        started, data_time, step_time, done = time.time(), 0.0, 0.0, 0
        for step in bar:
            task = self.mixer.task_at(step)
            t0 = time.time()
            batch = self.streams[task].next()
            inputs = [ms.Tensor(batch[n]) for n in self.input_names[task]]
            t1 = time.time()
            lr = apply_lr(self.optimizer)  # the schedule is data: the graph reads the LR Parameter set here
            if self.dropout_step is not None:
                self.dropout_step.set_data(ms.Tensor(np.array(step, np.int32)))
            loss, finite, scale, grad_norm = self.steps[task](*inputs)
            loss = float(loss.asnumpy())
            if self.dist.world_size > 1:  # log the mean over every rank's batch, not rank 0's own loss
                loss = float(np.mean(all_gather_numpy(np.array([loss], np.float32))))
            t2 = time.time()
            data_time, step_time, done = data_time + t1 - t0, step_time + t2 - t1, done + 1
            finite = bool(finite.asnumpy())
            if finite:
                self.tracker.add(task, loss)
            else:
                self.skipped += 1
            rate = done * self.samples_per_step / max(time.time() - started, 1e-9)
            bar.set_postfix_str(" ".join(f"{t}={self.tracker.recent_mean(t):.3f}" for t in self.steps)
                                + f" lr={lr:.2e} {rate:.1f} samples/s")
            if (step + 1) % cfg.run.log_every == 0 or step == self.start_step or step + 1 == total:
                log.write({"step": step + 1, "task": task, "loss": loss, "finite": finite, "lr": lr,
                           "loss_scale": float(scale.asnumpy()), "grad_norm": float(grad_norm.asnumpy()),
                           "samples_per_s": rate, "data_s": data_time / done, "step_s": step_time / done,
                           **{f"loss/{t}": self.tracker.recent_mean(t) for t in self.steps}})
            # evaluate first, so that the checkpoint of this step holds the best score so far
            if self.evaluator and ((cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0)
                                   or step + 1 == total):
                self.evaluate(step + 1, log)
            if (step + 1) % every == 0 or step + 1 == total:
                self.save(step + 1)
        bar.close()
        log.close()
        elapsed = time.time() - started
        return self.finish(elapsed, done, data_time, step_time)

    def evaluate(self, step, log):
        """Run the evaluator in eval mode; keep the best model weights (main rank writes)."""
        self.model.set_train(False)
        metrics = self.evaluator(step)
        self.model.set_train(True)
        record = {"step": step, **metrics}
        self.evaluations.append(record)
        log.write({"eval": record})
        score = metrics["score"]
        improved = self.best_score is None or score > self.best_score
        if improved:
            self.best_score = score
            if self.dist.is_main:
                path = os.path.join(self.out_dir, "best")
                model_tensors = {p.name: p for p in self.model.get_parameters() if p.name != DROPOUT_STEP}
                try:
                    CheckpointManager(path, keep_last=1, fmt=self.cfg.checkpoint.format).save(step, model_tensors,
                                                                                              record)
                except OSError as err:
                    raise write_error(f"the best model of step {step}", path, err) from None
        if self.dist.is_main:
            tqdm.write(f"eval at step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                          if isinstance(v, (int, float)))
                       + (" (best)" if improved else ""))
        return metrics

    def finish(self, elapsed, done, data_time, step_time):
        losses = self.tracker.summary()
        summary = {"steps": self.cfg.train.steps, "steps_this_run": done, "seconds": elapsed,
                   "samples_per_s": done * self.samples_per_step / max(elapsed, 1e-9),
                   "data_s_per_step": data_time / max(done, 1), "step_s_per_step": step_time / max(done, 1),
                   "skipped_steps": self.skipped, "losses": losses, "world_size": self.dist.world_size,
                   "evaluations": self.evaluations, "best_score": self.best_score, "compile_s": self.compile_s,
                   "compile_cache": self.compile_cache, "optimizer_kernel": list(self.optimizer.kernel_choice)}
        rows = [{"task": t, "steps": v["steps"], "first loss": v["first"], "last loss": v["last"],
                 "change %": 100.0 * (v["last"] - v["first"]) / abs(v["first"]) if v["first"] else math.nan}
                for t, v in losses.items()]
        columns = ["task", "steps", "first loss", "last loss", "change %"]
        if self.dist.is_main:
            compiled = (f"compiled {len(self.compile_s)} task graphs in {sum(self.compile_s.values()):.1f} s ("
                        + ", ".join(f"{t} {s:.1f}" for t, s in self.compile_s.items()) + ")"
                        + (f", compile cache {self.compile_cache}" if self.compile_cache else "")
                        + "; optimizer kernel {} ({})".format(*self.optimizer.kernel_choice))
            write_results(self.out_dir, "summary", summary, rows, columns, notes=[compiled])
            print(f"\n{markdown_table(rows, columns, floatfmt='.4f')}\n{compiled}\n"
                  f"{done} steps in {elapsed:.1f} s ({summary['samples_per_s']:.1f} samples/s, data "
                  f"{summary['data_s_per_step'] * 1e3:.0f} ms + step {summary['step_s_per_step'] * 1e3:.0f} ms per "
                  f"step), {self.skipped} skipped; outputs in {self.out_dir}")
        return summary
