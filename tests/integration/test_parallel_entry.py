"""Every entry point applies the `parallel:` section before building anything: on CPU, settings that need Ascend or
GPU end the process with exit code 2 and the one-line message docs/parallel.md promises (issue #28)."""
import os
import subprocess
import sys

import pytest

from src.engine.parallel import CPU_MESSAGE, OPTIMIZER_SHARD_CPU_MESSAGE
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TENSOR_PARALLEL = ("parallel.mode=semi_auto", "parallel.mp=2")


def run(args, tmp_path):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GLOG_v": "3", "PYTHONPATH": ROOT})
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.parametrize("entry, config, overrides, message", [
    ("train_pretrain.py", "config/pretrain/tiny.yaml", TENSOR_PARALLEL, CPU_MESSAGE),
    ("train_retrieval.py", "config/retrieval/tiny.yaml", ("parallel.optimizer_shard=true",),
     OPTIMIZER_SHARD_CPU_MESSAGE),
    ("train_caption.py", "config/caption/tiny.yaml", ("parallel.mode=semi_auto",), CPU_MESSAGE),
])
def test_trainers_refuse(entry, config, overrides, message, tmp_path):
    code, lines = run([entry, "--config", config, "--set", f"run.output_dir={tmp_path}/out", *overrides], tmp_path)
    assert code == 2
    assert lines == [f"error: {message}"]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_eval_and_export_refuse(tmp_path):
    ckpt = tmp_path / "step_00000001"
    ckpt.mkdir()
    for args in (["eval.py", "--task", "retrieval", "--config", "config/retrieval/tiny.yaml", "--ckpt", str(ckpt)],
                 ["eval.py", "--task", "caption", "--config", "config/caption/tiny.yaml", "--ckpt", str(ckpt)],
                 ["export.py", "--task", "caption", "--ckpt_file", str(ckpt), "--file_name", f"{tmp_path}/e/x",
                  "--config", "config/caption/tiny.yaml"]):
        code, lines = run([*args, "--set", *TENSOR_PARALLEL], tmp_path)
        assert (code, lines) == (2, [f"error: {CPU_MESSAGE}"]), args
