"""Distributed retrieval evaluation under a real two-worker msrun job equals the single-process evaluation.

The test split has 7 images and 35 captions, so neither the images nor the text queries divide evenly over 2 ranks
(the last rank gets filler rows that must not count), and itc_itm re-ranks a shortlist of k=3 per query.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from src.config import load_config
from src.weights.checkpoint import CheckpointManager
from src.models.opt import build_model
from src.data.tokenizer import Tokenizer
from tests.helpers import ROOT
from tests.integration.conftest import TINY_PRETRAIN, build_tiny_data, subprocess_env

pytestmark = pytest.mark.distributed
EVAL = os.path.join(ROOT, "eval.py")


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny model saved as run/checkpoints/step_00000000 with the run's config.yaml."""
    import mindspore as ms

    root = tmp_path_factory.mktemp("retrieval_msrun")
    data = build_tiny_data(root / "data", n_train=4, n_val=2, n_test=7)
    vocab = Tokenizer(data["vocab"]).vocab_size
    cfg = load_config(TINY_PRETRAIN, [f"data.vocab={data['vocab']}", f"data.test={data['test']}",
                                      f"model.text.vocab_size={vocab}", "run.compile_cache=false"])
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    ms.set_seed(3)
    model = build_model(cfg.model)
    CheckpointManager(str(run / "checkpoints")).save(0, {p.name: p for p in model.get_parameters()})
    return str(run / "checkpoints" / "step_00000000")


def _results(out_dir):
    with open(os.path.join(out_dir, "retrieval.json"), encoding="utf-8") as f:
        results = json.load(f)
    return {k: v for k, v in results.items() if k not in ("checkpoint", "seconds", "cpu_seconds", "world_size")}


def test_two_workers_equal_one_process(checkpoint, tmp_path):
    env = subprocess_env()
    env["PYTHONPATH"] = ROOT
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # msrun starts `python` from PATH
    args = ["--task", "retrieval", "--ckpt", checkpoint, "--mode", "itc_itm", "--k", "3", "--batch_size", "4"]

    single = subprocess.run([sys.executable, EVAL, *args, "--out", str(tmp_path / "single")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    logs = tmp_path / "msrun_log"
    command = ["msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "--join=True", f"--log_dir={logs}", "--cluster_time_out=120",
               EVAL, *args, "--out", str(tmp_path / "dist")]
    dist = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert dist.returncode == 0, dist.stderr[-2000:] + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))

    expected, got = _results(tmp_path / "single"), _results(tmp_path / "dist")
    assert expected["n_images"] == 7 and expected["n_texts"] == 35
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key
