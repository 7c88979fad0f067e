"""Kill and resume: a run killed with SIGKILL and resumed with checkpoint.resume=auto continues with exactly the losses
of an uninterrupted run; a corrupt newest checkpoint is skipped in favour of the previous one."""
import os
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.integration.conftest import read_metrics, subprocess_env, task_overrides

STEPS, EVERY, KILL_AFTER = 24, 3, 4  # many steps after the kill point, so the run cannot finish before the kill
SETTINGS = (*task_overrides("mlm", "itc"), f"train.steps={STEPS}", f"checkpoint.every={EVERY}",
            "checkpoint.keep_last=3")
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")

pytestmark = pytest.mark.slow


def run(cmd, data):
    result = subprocess.run(cmd, cwd=data["root"], env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses_by_step(records):
    return {r["step"]: r["loss"] for r in records}


def checkpoint_steps(out_dir):
    names = os.listdir(os.path.join(out_dir, "checkpoints"))
    return sorted(int(n[len("step_"):]) for n in names if re.fullmatch(r"step_\d+", n))


def resumed_step(stdout):
    match = RESUMED.search(stdout)
    assert match, stdout[-2000:]
    return os.path.basename(match.group(1)), int(match.group(2))


@pytest.fixture(scope="module")
def reference(tiny_data, pretrain_cmd, tmp_path_factory):
    """An uninterrupted run: its output folder and {step: loss}."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run(pretrain_cmd(out, *SETTINGS), tiny_data)
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert {r["task"] for r in records} == {"mlm", "itc"}
    return out, losses_by_step(records)


def logged_steps(metrics_path):
    """How many complete lines metrics.jsonl has so far (a line being written has no newline yet)."""
    if not os.path.exists(metrics_path):
        return 0
    with open(metrics_path, "rb") as f:
        return f.read().count(b"\n")


def kill_after_step(cmd, data, out_dir, step, log_path):
    """Start `cmd`, SIGKILL it as soon as metrics.jsonl shows `step`; returns the steps logged before the kill."""
    metrics = os.path.join(out_dir, "metrics.jsonl")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=data["root"], env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while time.time() < deadline and proc.poll() is None:
                if logged_steps(metrics) >= step:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, f"the run ended before step {step} was seen:\n{open(log_path).read()[-3000:]}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return read_metrics(out_dir)


def test_killed_run_resumes_with_identical_losses(tiny_data, pretrain_cmd, reference, tmp_path):
    _, expected = reference
    out = tmp_path / "out"
    before_kill = kill_after_step(pretrain_cmd(out, *SETTINGS), tiny_data, out, KILL_AFTER, tmp_path / "killed.log")
    logged = [r["step"] for r in before_kill]
    assert logged[:KILL_AFTER] == list(range(1, KILL_AFTER + 1)) and logged[-1] < STEPS
    np.testing.assert_allclose([r["loss"] for r in before_kill], [expected[s] for s in logged], rtol=1e-6)
    saved = checkpoint_steps(out)
    assert saved and saved[-1] >= EVERY and all(s % EVERY == 0 for s in saved)

    result = run(pretrain_cmd(out, *SETTINGS, "checkpoint.resume=auto"), tiny_data)
    name, start = resumed_step(result.stdout)
    assert (name, start) == (f"step_{saved[-1]:08d}", saved[-1])  # the newest checkpoint at the kill
    records = read_metrics(out)  # the resumed run dropped the killed run's lines after its checkpoint, then appended
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records], [expected[s] for s in range(1, STEPS + 1)], rtol=1e-6)
    assert checkpoint_steps(out) == [STEPS - 2 * EVERY, STEPS - EVERY, STEPS]


def test_corrupt_newest_checkpoint_is_skipped(tiny_data, pretrain_cmd, reference, tmp_path):
    ref_out, expected = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    assert checkpoint_steps(out) == [STEPS - 2 * EVERY, STEPS - EVERY, STEPS]
    newest = out / "checkpoints" / f"step_{STEPS:08d}"
    weights = next(p for p in newest.iterdir() if p.name.startswith("weights."))
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    logged = len(read_metrics(out))

    result = run(pretrain_cmd(out, *SETTINGS, "checkpoint.resume=auto"), tiny_data)
    previous = STEPS - EVERY
    assert resumed_step(result.stdout) == (f"step_{previous:08d}", previous)
    assert f"skipping checkpoint {newest}" in result.stderr
    records = read_metrics(out)
    assert len(records) == logged and [r["step"] for r in records] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records], [expected[s] for s in range(1, STEPS + 1)], rtol=1e-6)
