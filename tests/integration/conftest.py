"""Shared set-up of the end-to-end tests: one tiny demo data set per session and the train_pretrain.py command."""
import json
import os
import sys

import pytest

from tests.helpers import ROOT

TRAIN_PRETRAIN = os.path.join(ROOT, "train_pretrain.py")
TINY_PRETRAIN = os.path.join(ROOT, "config", "pretrain", "tiny.yaml")
COMPILE_CACHE = os.path.join(ROOT, ".ms_cache")
SPLITS = ("train", "val", "test")


def build_tiny_data(root, n_train=32, n_val=8, n_test=8):
    """Demo data under `root` (32 px images, tone audio), its vocabulary and one MindRecord per split.

    Returns {"root", "vocab", "train", "val", "test"} as absolute path strings (MindRecord paths are the --out names).
    """
    from src.data.build_mindrecord import build_mindrecord
    from demo.data import generate_demo
    from src.data.vocab import main as vocab_main

    root = os.path.abspath(root)
    generate_demo(root, n_train, n_val, n_test, image_size=32, audio="tones", workers=1)
    paths = {"root": root, "vocab": os.path.join(root, "vocab.txt")}
    manifests = [os.path.join(root, f"{split}.jsonl") for split in SPLITS]
    assert vocab_main(["--manifest", *manifests, "--out", paths["vocab"]]) == 0
    for split, manifest in zip(SPLITS, manifests):
        paths[split] = os.path.join(root, "mindrecord", f"{split}.mindrecord")
        build_mindrecord(manifest, paths[split], paths["vocab"], workers=1, max_frames=256)
    return paths


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The paths of build_tiny_data, built once per test session."""
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


def train_pretrain_command(data, out_dir, *overrides):
    """Command list running train_pretrain.py on config/pretrain/tiny.yaml with `data` (from build_tiny_data), writing
    to `out_dir`; `overrides` are further KEY=VALUE items for --set.

    Run it with cwd = data["root"]: the data paths are given relative to that folder, so the resolved config, and with
    it the compile-cache key (src.engine.context.enable_compile_cache), is the same in every test session.
    """
    rel = {name: os.path.relpath(data[name], data["root"]) for name in ("vocab", *SPLITS)}
    return [sys.executable, TRAIN_PRETRAIN, "--config", TINY_PRETRAIN, "--set", f"data.train={rel['train']}",
            f"data.val={rel['val']}", f"data.test={rel['test']}", f"data.vocab={rel['vocab']}",
            f"run.output_dir={os.path.abspath(out_dir)}", f"run.compile_cache_dir={COMPILE_CACHE}", *overrides]


@pytest.fixture(scope="session")
def pretrain_cmd(tiny_data):
    """`pretrain_cmd(out_dir, *overrides)` -> the train_pretrain.py command list on the session's tiny data (run it
    with cwd = tiny_data["root"])."""
    return lambda out_dir, *overrides: train_pretrain_command(tiny_data, out_dir, *overrides)


def task_overrides(*enabled):
    """--set items switching exactly the pretraining tasks in `enabled` on (ratio 1) and every other one off."""
    from src.data.pretrain_data import PRETRAIN_TASKS
    return [f"pretrain.tasks.{t}={1 if t in enabled else 0}" for t in PRETRAIN_TASKS]


def subprocess_env():
    """The environment for train_pretrain.py subprocesses: quiet MindSpore logs, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_ID"))}
    env["GLOG_v"] = "3"
    return env


def read_metrics(out_dir):
    """The step records of `<out_dir>/metrics.jsonl`, in file order (evaluation records left out)."""
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "step" in r]
