"""train_pretrain.py end to end on the tiny config: every default task trains, the outputs are written, and user
mistakes exit with code 2 and a one-line message."""
import json
import os
import subprocess

import pytest
import yaml

from src.config import load_config
from src.data.tokenizer import Tokenizer
from src.engine.mixing import TaskMixer
from tests.integration.conftest import TINY_PRETRAIN, read_metrics, subprocess_env, task_overrides

DEFAULT_TASKS = ("mlm", "mvm", "mam", "itm", "itc", "td")


def run(cmd, data):
    return subprocess.run(cmd, cwd=data["root"], env=subprocess_env(), capture_output=True, text=True, timeout=400)


def steps_until_all_tasks_drawn(overrides):
    """The planned task of each step, up to the first step by which every enabled task has been drawn once."""
    cfg = load_config(TINY_PRETRAIN, overrides)
    mixer = TaskMixer(dict(cfg.pretrain.tasks), cfg.run.seed)
    plan = []
    while set(plan) != set(mixer.tasks):
        plan.append(mixer.task_at(len(plan)))
    return plan


@pytest.mark.slow
def test_all_default_tasks_train_and_write_outputs(tiny_data, pretrain_cmd, tmp_path):
    tasks = task_overrides(*DEFAULT_TASKS)
    plan = steps_until_all_tasks_drawn(tasks)
    assert len(plan) <= 30  # keeps the run short; a change of seed or mixer could need a longer run
    out = tmp_path / "out"
    result = run(pretrain_cmd(out, *tasks, f"train.steps={len(plan)}", "checkpoint.every=3",
                              "pretrain.val_batches=8"), tiny_data)   # the shipping default: validation on data.val
    assert result.returncode == 0, result.stderr[-3000:]

    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, len(plan) + 1))  # log_every 1 in tiny.yaml
    assert [r["task"] for r in records] == plan
    assert set(plan) == set(DEFAULT_TASKS)
    for r in records:
        assert r["finite"] is True and r["loss"] > 0 and r["lr"] > 0

    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    vocab_size = Tokenizer(tiny_data["vocab"]).vocab_size
    assert vocab_size > 0 and saved["model"]["text"]["vocab_size"] == vocab_size
    assert saved["pretrain"]["tasks"]["id"] == 0 and saved["train"]["steps"] == len(plan)

    last = len(plan)
    expected_steps = sorted({s for s in range(3, last + 1, 3)} | {last})[-3:]  # checkpoint.keep_last 3
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == [f"step_{s:08d}" for s in expected_steps]
    assert (out / "checkpoints" / names[-1] / "state.json").is_file()

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == last and summary["steps_this_run"] == last and summary["skipped_steps"] == 0
    assert {t: v["steps"] for t, v in summary["losses"].items()} == {t: plan.count(t) for t in DEFAULT_TASKS}
    for task, stats in summary["losses"].items():  # means of the first and of the last k = steps // 5 losses
        losses = [r["loss"] for r in records if r["task"] == task]
        k = max(1, len(losses) // 5)
        assert stats["first"] == pytest.approx(sum(losses[:k]) / k, rel=1e-6)
        assert stats["last"] == pytest.approx(sum(losses[-k:]) / k, rel=1e-6)
    table = (out / "summary.md").read_text(encoding="utf-8")
    assert all(f"| {t} |" in table for t in DEFAULT_TASKS)

    # validation at the end: every task's loss on data.val (8 samples = 2 batches of 4), the best model kept
    [evaluation] = summary["evaluations"]
    assert evaluation["step"] == last and set(evaluation) == {"step", "score", "val_loss"} | {
        f"val_loss/{t}" for t in DEFAULT_TASKS}
    assert all(0 < evaluation[f"val_loss/{t}"] < 50 for t in DEFAULT_TASKS)
    assert evaluation["val_loss"] == pytest.approx(sum(evaluation[f"val_loss/{t}"] for t in DEFAULT_TASKS) / 6)
    assert summary["best_score"] == pytest.approx(-evaluation["val_loss"])
    assert os.listdir(out / "best") == [f"step_{last:08d}"]


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow
def test_unknown_config_key_exits_2_naming_the_key(tiny_data, pretrain_cmd, tmp_path):
    result = run(pretrain_cmd(tmp_path / "out", "train.stepz=5"), tiny_data)
    assert result.returncode == 2
    message = one_line_error(result)
    assert "train.stepz" in message and "steps" in message  # names the key and suggests the valid ones
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_data_file_exits_2_naming_the_file(tiny_data, pretrain_cmd, tmp_path):
    missing = tmp_path / "nowhere" / "train.mindrecord"
    result = run(pretrain_cmd(tmp_path / "out", f"data.train={missing}"), tiny_data)
    assert result.returncode == 2
    message = one_line_error(result)
    assert str(missing) in message and "{path}" not in message
    assert not (tmp_path / "out").exists()


def test_every_task_the_data_cannot_feed_is_named_in_one_error(tiny_data, tmp_path, capsys, monkeypatch):
    """mam needs audio (switched off here) and id needs image codes (the tiny data has none): one launch names both,
    with the one --set that switches both off, before anything is built."""
    import train_pretrain
    from src.utils.cli import run_main
    from tests.integration.conftest import train_pretrain_command
    monkeypatch.chdir(tiny_data["root"])
    argv = train_pretrain_command(tiny_data, tmp_path / "out", "data.use_audio=false",
                                  *task_overrides("mlm", "mam", "id"))[2:]
    assert run_main(train_pretrain.main, argv) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: the data cannot feed 2 pretraining task(s)")
    assert "task 'mam' needs audio but data.use_audio is false" in message
    assert "task 'id' needs image tokens" in message
    assert message.endswith("--set pretrain.tasks.mam=0 pretrain.tasks.id=0")
    assert not (tmp_path / "out").exists()
