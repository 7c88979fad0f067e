"""Compile once: a second train_pretrain.py launch whose data lives in another folder and which runs another
train.steps and learning rate resolves to the first launch's compile-cache folder and loads every task graph from it,
writing nothing new there."""
import json
import os
import shutil
import subprocess

import pytest

from tests.integration.conftest import SPLITS, subprocess_env, task_overrides, train_pretrain_command

TASKS = task_overrides("mlm", "itc")


def run(data, out, cache, *overrides):
    cmd = train_pretrain_command(data, out, *TASKS, f"run.compile_cache_dir={cache}", *overrides)
    result = subprocess.run(cmd, cwd=data["root"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file under `folder`."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            stat = os.stat(path)
            files[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return files


def moved_copy(data, folder):
    """The vocabulary and MindRecord folder of `data` copied into `folder` (other paths, same content)."""
    records = os.path.dirname(data["train"])
    copied = shutil.copytree(records, os.path.join(folder, "records"))
    moved = {"root": data["root"], "vocab": shutil.copy(data["vocab"], folder)}
    for split in SPLITS:
        assert os.path.dirname(data[split]) == records
        moved[split] = os.path.join(copied, os.path.basename(data[split]))
    return moved


@pytest.mark.slow
def test_rerun_with_other_data_paths_and_steps_loads_every_graph_from_the_cache(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    first = run(tiny_data, tmp_path / "a", cache, "train.steps=2")
    folder = first["compile_cache"]
    assert folder and os.path.dirname(folder) == str(cache) and set(first["compile_s"]) == {"mlm", "itc"}
    written = snapshot(folder)
    assert written, "the first launch cached nothing"

    moved = moved_copy(tiny_data, tmp_path / "moved")
    second = run(moved, tmp_path / "b", cache, "train.steps=3", "optim.lr=5.0e-4", "optim.warmup_steps=1",
                 "train.eval_every=2")
    assert second["compile_cache"] == folder and second["steps"] == 3
    assert os.listdir(cache) == [os.path.basename(folder)]
    # a graph compiled again would be written again: MindSpore rewrites nothing it loads from the cache
    assert snapshot(folder) == written
    # measured 29 s against 1.8 s (the loads); a margin wide enough for a loaded machine
    assert sum(second["compile_s"].values()) < 0.5 * sum(first["compile_s"].values())
    assert "compiled 2 task graphs" in (tmp_path / "b" / "summary.md").read_text(encoding="utf-8")
