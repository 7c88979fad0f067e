"""Resume that all ranks agree on, with the real launcher: a 2-worker msrun pre-training job (scripts/run_msrun.sh) is
killed mid-run, resumed with checkpoint.resume=auto, and logs exactly the losses of an uninterrupted 2-worker job."""
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.integration.conftest import TINY_PRETRAIN, build_tiny_data, read_metrics, subprocess_env, task_overrides

STEPS, EVERY, KILL_AFTER = 24, 3, 5
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """`job(out, *extra)` -> the run_msrun.sh command of a 2-worker tiny pre-training job writing to `out`."""
    data = build_tiny_data(tmp_path_factory.mktemp("resume_data"))
    cache = tmp_path_factory.mktemp("cache")

    def command(out, *extra):
        return ["bash", os.path.join(ROOT, "scripts", "run_msrun.sh"), "--worker_num", "2", "--master_port",
                str(_free_port()), "--cluster_time_out", "180", "pretrain", TINY_PRETRAIN,
                f"data.train={data['train']}", f"data.vocab={data['vocab']}", *task_overrides("mlm", "itc"),
                f"train.steps={STEPS}", f"checkpoint.every={EVERY}", "train.batch_size=2", "run.log_every=1",
                f"run.compile_cache_dir={cache}", f"run.output_dir={out}", *extra]
    return command


def _descendants(pid):
    """Every process below `pid`, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _gone(pid):
    """True when `pid` has exited (a zombie nobody reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True


def _run(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text()[-2000:] for p in (cwd / "out").glob("msrun_log/*.log")) if result.returncode else ""
    assert result.returncode == 0, result.stderr[-2000:] + logs
    return result


def test_killed_msrun_job_resumes_on_every_rank(job, tmp_path):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    _run(job(reference_dir / "out"), reference_dir)
    expected = {r["step"]: r["loss"] for r in read_metrics(reference_dir / "out")}
    assert sorted(expected) == list(range(1, STEPS + 1))

    out = tmp_path / "out"
    metrics = out / "metrics.jsonl"
    launcher_log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(job(out), cwd=tmp_path, env=subprocess_env(), stdout=launcher_log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_bytes().count(b"\n") >= KILL_AFTER:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed:\n" + "".join(
            p.read_text()[-3000:] for p in [tmp_path / "killed.log", *(out / "msrun_log").glob("*.log")])
    finally:
        job_pids = [proc.pid, *_descendants(proc.pid)]
        for pid in job_pids:  # msrun starts the workers in sessions of their own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        launcher_log.close()
    time.sleep(1)
    assert len(job_pids) >= 3 and all(_gone(pid) for pid in job_pids)
    killed_at = [r["step"] for r in read_metrics(out)][-1]
    assert KILL_AFTER <= killed_at < STEPS
    saved = sorted(int(n[5:]) for n in os.listdir(out / "checkpoints") if re.fullmatch(r"step_\d+", n))
    assert saved and saved[-1] < STEPS

    _run(job(out, "checkpoint.resume=auto"), tmp_path)
    worker_log = (out / "msrun_log" / "worker_0.log").read_text()
    assert f"resumed from {out / 'checkpoints' / f'step_{saved[-1]:08d}'} at step {saved[-1]}" in worker_log
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))   # every step once
    np.testing.assert_allclose([r["loss"] for r in records], [expected[s] for s in range(1, STEPS + 1)], rtol=1e-5)


def test_ranks_that_disagree_on_the_resume_step_stop(job, tmp_path):
    """Rank 1 sees another checkpoint folder than rank 0 (as on servers without shared storage): both exit non-zero
    naming the ranks and their steps, instead of rank 1 silently starting over."""
    _run(job(tmp_path / "out", "train.steps=3", "checkpoint.every=3"), tmp_path)   # a real step-3 checkpoint
    os.rename(tmp_path / "out" / "checkpoints", tmp_path / "ckpt_0")                  # rank 0's folder; rank 1's empty
    driver = os.path.join(ROOT, "tests", "distributed", "per_rank_ckpt.py")
    env = dict(subprocess_env(), OPT_TRAIN_CMD=f"python {driver} {tmp_path / 'ckpt'}")
    result = subprocess.run(job(tmp_path / "out", "checkpoint.resume=auto"), cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    for rank in (0, 1):
        log = (tmp_path / "out" / "msrun_log" / f"worker_{rank}.log").read_text()
        assert "error: checkpoint.resume=auto: the ranks disagree on where to resume (rank 0: step 3, rank 1: no " \
               "checkpoint)" in log, log[-2000:]
