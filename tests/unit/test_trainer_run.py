"""The Trainer's bookkeeping around a resume, on a one-layer regression task: the best validation score survives a
resume, metrics.jsonl holds every step once in strict JSON, counts are validated, and an unwritable output folder or
a full disk is a one-line UserError before anything is compiled."""
import json
import os
from types import SimpleNamespace

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import nn

from src.config import load_config
from src.engine import trainer as trainer_module
from src.engine.distributed import DistInfo
from src.engine.mixing import TaskMixer
from src.engine.optim import LR_PARAM, lr_at
from src.engine.trainer import Trainer
from src.errors import UserError
from src.weights.checkpoint import load_checkpoint

DIST = DistInfo(rank=0, world_size=1, local_rank=0, device_id=0, is_main=True)


class Regression(nn.Cell):
    input_names = ("x", "y")

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, x, y):
        return ((self.model(x) - y) ** 2).mean()


class _Source:
    def __init__(self, start):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((64, 4)).astype(np.float32)[start:]
        self.y = self.x.sum(axis=1, keepdims=True)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __len__(self):
        return len(self.x)


def make_dataset(epoch, start_batch):
    return ds.GeneratorDataset(_Source(2 * start_batch), ["x", "y"], shuffle=False).batch(2)


def config(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "run.yaml"
    path.write_text("run:\n  mode: graph\n  compile_cache: false\n", encoding="utf-8")
    return load_config(str(path), [f"run.output_dir={tmp_path / 'out'}", "train.batch_size=2", "run.log_every=1",
                                   "optim.warmup_steps=1", *overrides])


class DroppedDense(nn.Cell):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(p=0.5)
        self.dense = nn.Dense(4, 1)

    def construct(self, x):
        return self.dense(self.drop(x))


def make_trainer(cfg, evaluator=None, dropout=False):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    model = DroppedDense() if dropout else nn.Dense(4, 1)
    return Trainer(cfg, DIST, model, {"reg": Regression(model)}, TaskMixer({"reg": 1.0}, 0), {"reg": make_dataset},
                   2, evaluator)


class Crash(Exception):
    pass


def strict_records(path):
    def refuse(name):
        raise AssertionError(f"{path} holds the non-JSON constant {name}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


@pytest.mark.slow
def test_resume_keeps_best_score_and_clean_metrics(tmp_path):
    settings = ("train.steps=4", "checkpoint.every=2", "train.eval_every=2")
    scores = {2: 5.0, 4: 1.0}

    def crashing(step):
        if step == 4:
            raise Crash()   # killed after the step-4 line was logged, before its checkpoint
        return {"score": scores[step], "spread": float("nan")}

    with pytest.raises(Crash):
        make_trainer(config(tmp_path, *settings), crashing).run()
    steps = [r.get("step") for r in strict_records(tmp_path / "out" / "metrics.jsonl")]
    assert steps == [1, 2, None, 3, 4]   # None: the evaluation line of step 2

    resumed = make_trainer(config(tmp_path, *settings, "checkpoint.resume=auto"),
                           lambda step: {"score": scores[step], "spread": float("inf")})
    summary = resumed.run()
    assert resumed.start_step == 2
    assert summary["best_score"] == 5.0                                   # the score before the resume still counts
    assert os.listdir(tmp_path / "out" / "best") == ["step_00000002"]    # and its weights were not overwritten
    records = strict_records(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] if "step" in r else ("eval", r["eval"]["step"]) for r in records] == [
        1, 2, ("eval", 2), 3, 4, ("eval", 4)]
    assert records[2]["eval"]["spread"] is None and records[5]["eval"]["spread"] is None
    assert [e["step"] for e in summary["evaluations"]] == [2, 4]


@pytest.mark.parametrize("override, key", [("train.steps=-3", "train.steps"), ("train.steps=0", "train.steps"),
                                           ("checkpoint.every=0", "checkpoint.every"),
                                           ("checkpoint.keep_last=0", "checkpoint.keep_last"),
                                           ("run.log_every=-1", "run.log_every"),
                                           ("train.grad_accumulation=0", "train.grad_accumulation"),
                                           ("train.eval_every=-2", "train.eval_every")])
def test_counts_are_validated(tmp_path, override, key):
    with pytest.raises(UserError, match=rf"^{key}=-?\d+ must be an integer >= \d$"):
        make_trainer(config(tmp_path, override))


def test_unwritable_output_fails_before_compiling(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    cfg = config(tmp_path, f"run.output_dir={tmp_path / 'file' / 'out'}", "train.steps=2")
    trainer = make_trainer(cfg)
    monkeypatch.setattr(trainer, "compile_steps", lambda: pytest.fail("compiled before checking the folder"))
    with pytest.raises(UserError, match=r"^cannot write to the output folder .*file/out: Not a directory; "):
        trainer.run()


def test_full_disk_fails_before_compiling(tmp_path, monkeypatch):
    trainer = make_trainer(config(tmp_path, "train.steps=2"))
    monkeypatch.setattr(trainer, "compile_steps", lambda: pytest.fail("compiled before checking the disk"))
    monkeypatch.setattr(trainer_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    with pytest.raises(UserError, match=r"^the disk of .*checkpoints has 0 MiB free but one checkpoint needs"):
        trainer.run()


def test_disk_full_while_saving_is_one_line(tmp_path, monkeypatch):
    trainer = make_trainer(config(tmp_path, "train.steps=2"))
    trainer.restore()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(trainer.manager, "save", full)
    with pytest.raises(UserError, match=r"^cannot write the checkpoint of step 2 to .*: the disk is full; "):
        trainer.save(2)


@pytest.mark.slow
def test_resume_is_exact_with_dropout(tmp_path):
    """Dropout 0.5: a run stopped after its step-3 checkpoint and resumed logs the losses of an uninterrupted run."""
    settings = ("train.steps=6", "checkpoint.every=3", "optim.lr=0.05")
    make_trainer(config(tmp_path / "a", *settings), dropout=True).run()
    expected = [r["loss"] for r in strict_records(tmp_path / "a" / "out" / "metrics.jsonl")]
    assert len(expected) == 6 and len(set(expected)) == 6

    def stop_at_4(step):
        raise Crash()
    stopped = make_trainer(config(tmp_path / "b", *settings, "train.eval_every=4"), stop_at_4, dropout=True)
    with pytest.raises(Crash):
        stopped.run()
    resumed = make_trainer(config(tmp_path / "b", *settings, "checkpoint.resume=auto"), dropout=True)
    resumed.run()
    assert resumed.start_step == 3
    losses = [r["loss"] for r in strict_records(tmp_path / "b" / "out" / "metrics.jsonl")]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert "dropout_step" not in resumed.state.tensors()


def test_dropout_masks_kernel_keeps_mindspore_dropout_and_trains(tmp_path):
    """train.dropout_masks=kernel: the trainer leaves MindSpore's Dropout kernel in place (no step counter) and trains;
    an unknown value is refused naming the key."""
    trainer = make_trainer(config(tmp_path / "k", "train.steps=2", "train.dropout_masks=kernel"), dropout=True)
    assert trainer.dropout_step is None
    assert isinstance(trainer.model.drop.dropout, ms.ops.Dropout)
    trainer.run()
    losses = [r["loss"] for r in strict_records(tmp_path / "k" / "out" / "metrics.jsonl")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    stepped = make_trainer(config(tmp_path / "s", "train.steps=1"), dropout=True)
    assert stepped.dropout_step is not None and not isinstance(stepped.model.drop.dropout, ms.ops.Dropout)
    with pytest.raises(UserError, match="train.dropout_masks must be one of step, kernel"):
        make_trainer(config(tmp_path / "x", "train.steps=1", "train.dropout_masks=native"), dropout=True)


class RecordedStep:
    """A train step that records the learning-rate Parameter's value each time it runs."""

    def __init__(self, step, optimizer, seen):
        self.step, self.optimizer, self.seen = step, optimizer, seen

    def compile(self, *inputs):
        return self.step.compile(*inputs)

    def __call__(self, *inputs):
        self.seen.append(float(self.optimizer.learning_rate.asnumpy()))
        return self.step(*inputs)


def recording_trainer(cfg, evaluator=None):
    trainer = make_trainer(cfg, evaluator)
    seen = []
    trainer.steps = {name: RecordedStep(step, trainer.optimizer, seen) for name, step in trainer.steps.items()}
    return trainer, seen


@pytest.mark.slow
def test_learning_rate_parameter_follows_lr_at_across_a_resume(tmp_path):
    """The graph reads the LR from a Parameter the trainer sets before every step: its value is lr_at at each step,
    in an uninterrupted run and in one resumed from its step-3 checkpoint; the checkpoint does not hold it."""
    settings = ("train.steps=7", "checkpoint.every=3", "optim.lr=0.05", "optim.end_lr=0.001", "optim.warmup_steps=2",
                "optim.schedule=cosine")
    expected = [float(np.float32(lr_at(s, 0.05, 0.001, 2, 7, "cosine"))) for s in range(7)]
    assert len(set(expected)) == 6   # warm-up, peak and decay: every step but the peak's neighbour differs

    whole, seen = recording_trainer(config(tmp_path / "a", *settings))
    whole.run()
    assert seen == expected
    assert [r["lr"] for r in strict_records(tmp_path / "a" / "out" / "metrics.jsonl")] == expected

    def stop_at_5(step):
        raise Crash()
    stopped, _ = recording_trainer(config(tmp_path / "b", *settings, "train.eval_every=5"), stop_at_5)
    with pytest.raises(Crash):
        stopped.run()
    resumed, seen = recording_trainer(config(tmp_path / "b", *settings, "checkpoint.resume=auto"))
    resumed.run()
    assert resumed.start_step == 3 and seen == expected[3:]
    assert LR_PARAM not in resumed.state.tensors()
    saved, _ = load_checkpoint(str(tmp_path / "b" / "out" / "checkpoints" / "step_00000003"))
    assert LR_PARAM not in saved and "global_step" in saved


def test_optimizer_kernels_train_alike_and_the_summary_names_the_one_used(tmp_path):
    """optim.kernel native (the CPU default) and mindspore: the same losses over three steps (the update differs only
    in float rounding); summary.json records which kernel ran and why."""
    losses = {}
    for kernel in ("native", "mindspore"):
        trainer = make_trainer(config(tmp_path / kernel, "train.steps=3", "optim.lr=0.05", f"optim.kernel={kernel}"))
        summary = trainer.run()
        assert summary["optimizer_kernel"][0] == kernel
        with open(tmp_path / kernel / "out" / "summary.json", encoding="utf-8") as f:
            assert json.load(f)["optimizer_kernel"] == summary["optimizer_kernel"]
        losses[kernel] = [r["loss"] for r in strict_records(tmp_path / kernel / "out" / "metrics.jsonl")]
    assert len(set(losses["native"])) == 3
    np.testing.assert_allclose(losses["native"], losses["mindspore"], rtol=1e-5)
