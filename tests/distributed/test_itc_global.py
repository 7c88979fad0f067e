"""Global contrastive batches: under 2-worker msrun data parallelism at batch 2 per rank, the ITC loss of every step,
as logged and as each rank computes it, equals the loss of one process over the same 4 samples, and the parameters
after the steps are those of the single process (the towers' features are gathered across ranks, with gradients
through each rank's own rows)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.test_data_parallel import DRIVER, PER_RANK, STEPS, WORLD, _free_port
from tests.helpers import ROOT
from tests.integration.conftest import build_tiny_data, subprocess_env, task_overrides

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def settings(data, batch, task="itc", extra=()):
    return [f"data.train={data['train']}", f"data.vocab={data['vocab']}", *task_overrides(task),
            f"train.steps={STEPS}", f"train.batch_size={batch}", "run.compile_cache=false", "run.log_every=1",
            *extra]


def assert_msrun_is_one_process(task, tmp_path_factory, tmp_path, extra=(), per_rank_buffers=()):
    """Train `task` for STEPS steps in one process at batch WORLD * PER_RANK and under msrun with WORLD workers at
    PER_RANK (config overrides `extra` in both); every rank's losses, the logged ones and rank 0's parameters must be
    the single process's, except the statistics of each rank's own batch named in `per_rank_buffers`."""
    data = build_tiny_data(tmp_path_factory.mktemp(f"{task}_data"))
    env = subprocess_env()
    env["PYTHONPATH"] = ROOT
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]

    single_out = tmp_path / "single"
    single_out.mkdir()
    result = subprocess.run([sys.executable, DRIVER, str(single_out), *settings(data, WORLD * PER_RANK, task, extra)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    dp_out, logs = tmp_path / "dp", tmp_path / "msrun_log"
    dp_out.mkdir()
    command = ["msrun", f"--worker_num={WORLD}", f"--local_worker_num={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "--join=True", f"--log_dir={logs}", "--cluster_time_out=180",
               DRIVER, str(dp_out), *settings(data, PER_RANK, task, extra)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:] + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))

    single = np.load(single_out / "rank_0.npz")
    ranks = [np.load(dp_out / f"rank_{r}.npz") for r in range(WORLD)]
    assert single["losses"].shape == (STEPS,)
    for rank in ranks:   # every rank logs the loss of the whole global batch
        np.testing.assert_allclose(rank["losses"], single["losses"], rtol=0, atol=2e-5)
    names = [k for k in single.files if k != "losses" and k not in per_rank_buffers]
    for name in names:
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=0, atol=2e-5, err_msg=name)
    with open(dp_out / "run" / "metrics.jsonl", encoding="utf-8") as f:
        logged = [json.loads(line)["loss"] for line in f if '"step"' in line]
    np.testing.assert_allclose(logged, single["losses"], rtol=0, atol=2e-5)


def test_itc_loss_is_the_global_batch_loss(tmp_path_factory, tmp_path):
    assert_msrun_is_one_process("itc", tmp_path_factory, tmp_path)
