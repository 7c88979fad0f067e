"""Data parallelism is exact: two msrun workers at batch 2 each train to the same parameters as one process at batch 4
on the same samples, and the loss every rank logs (the mean over the ranks) is the single-process loss of every
step."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from src.config import load_config
from src.data.pretrain_data import build_pretrain_dataset, epoch_indices, open_mindrecord
from src.data.tokenizer import Tokenizer
from tests.helpers import ROOT
from tests.integration.conftest import TINY_PRETRAIN, build_tiny_data, subprocess_env, task_overrides

DRIVER = os.path.join(ROOT, "tests", "distributed", "dp_driver.py")
WORLD, PER_RANK, STEPS = 2, 2, 3
# mvm: every sample masks round(16 patches * 0.3) = 5 patches, so the loss (a weighted mean over masked patches) gives
# every sample the same weight and the mean over 4 samples is the mean of the two ranks' means over 2.
TASK = "mvm"
MASKED_PER_SAMPLE = 5

pytestmark = pytest.mark.distributed


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(data, batch):
    return [f"data.train={data['train']}", f"data.vocab={data['vocab']}", *task_overrides(TASK),
            f"train.steps={STEPS}", f"train.batch_size={batch}", "run.compile_cache=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("dp_data"))


def test_rank_shards_are_the_single_process_batches(data):
    """Step k: rank r reads perm[r::2][2k:2k+2]; one process reads perm[4k:4k+4] -> the same four samples."""
    cfg = load_config(TINY_PRETRAIN, settings(data, WORLD * PER_RANK))
    n = open_mindrecord(data["train"], data["vocab"]).count
    single = epoch_indices(n, cfg.run.seed, 0, 0, 1, drop_remainder_to=WORLD * PER_RANK)
    shards = [epoch_indices(n, cfg.run.seed, 0, r, WORLD, drop_remainder_to=PER_RANK) for r in range(WORLD)]
    for k in range(STEPS):
        together = np.concatenate([s[k * PER_RANK:(k + 1) * PER_RANK] for s in shards])
        assert sorted(together) == sorted(single[k * WORLD * PER_RANK:(k + 1) * WORLD * PER_RANK])

    tokenizer = Tokenizer(data["vocab"])
    cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    batches = build_pretrain_dataset(data["train"], TASK, cfg, tokenizer, WORLD * PER_RANK, 0)
    for _, batch in zip(range(STEPS), batches.create_dict_iterator(num_epochs=1, output_numpy=True)):
        assert batch["image_masked"].sum(axis=1).tolist() == [MASKED_PER_SAMPLE] * WORLD * PER_RANK


def test_two_workers_match_one_process(data, tmp_path):
    env = subprocess_env()
    env["PYTHONPATH"] = ROOT
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # msrun starts `python` from PATH

    single_out = tmp_path / "single"
    single_out.mkdir()
    result = subprocess.run([sys.executable, DRIVER, str(single_out), *settings(data, WORLD * PER_RANK)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    dp_out, logs = tmp_path / "dp", tmp_path / "msrun_log"
    dp_out.mkdir()
    command = ["msrun", f"--worker_num={WORLD}", f"--local_worker_num={WORLD}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "--join=True", f"--log_dir={logs}", "--cluster_time_out=120",
               DRIVER, str(dp_out), *settings(data, PER_RANK)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:] + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))

    single = np.load(single_out / "rank_0.npz")
    ranks = [np.load(dp_out / f"rank_{r}.npz") for r in range(WORLD)]
    names = [k for k in single.files if k != "losses"]
    assert names and all(sorted(r.files) == sorted(single.files) for r in ranks)
    for name in names:
        assert np.array_equal(ranks[0][name], ranks[1][name]), name  # the all-reduced update is the same on each
        np.testing.assert_allclose(ranks[0][name], single[name], rtol=0, atol=1e-5, err_msg=name)
    assert single["losses"].shape == (STEPS,)
    for rank in ranks:   # every rank logs the mean over the ranks' batches: the single-process loss
        np.testing.assert_allclose(rank["losses"], single["losses"], rtol=0, atol=1e-5)
