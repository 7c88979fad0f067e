"""The shell launchers (dry runs, a failing rank, argument errors) and src/engine/distributed.py in one process."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scripts.make_rank_table import build_table, merge_tables
from src.engine.distributed import DistInfo, all_gather_numpy, barrier, init_distributed, is_distributed
from src.engine.distributed import launcher_from_env
from src.errors import UserError
from tests.helpers import ROOT

SCRIPTS = os.path.join(ROOT, "scripts")
LAUNCH_VARS = ("SERVER_ID", "OUTPUT_DIR", "DRY_RUN", "OPT_TRAIN_CMD", "RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID",
               "DEVICE_ID", "MS_ROLE", "MS_WORKER_NUM", "GLOG_v", "PYTHON")

# A stand-in trainer: records its cwd, arguments and rank variables in its run.output_dir; FAKE_FAIL_RANK exits 1 at
# once, FAKE_SLEEP makes the other ranks start a `sleep 60` child and sleep too (their pids are written to pids.txt).
FAKE_TRAINER = """
import json, os, subprocess, sys, time
rank = os.environ.get("RANK_ID", "")
out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("run.output_dir=")][0]
launched_in = os.getcwd()
os.makedirs(out, exist_ok=True)
os.chdir(out)
with open("seen.json", "w") as f:
    json.dump({"cwd": launched_in, "argv": sys.argv[1:], "rank": rank, "device": os.environ.get("DEVICE_ID")}, f)
print("fake trainer rank", rank, flush=True)
if rank == os.environ.get("FAKE_FAIL_RANK"):
    sys.exit(1)
if os.environ.get("FAKE_SLEEP"):
    child = subprocess.Popen(["sleep", "60"])
    with open("pids.txt", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(60)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def _run(script, args, cwd, **env):
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    clean.update(env)
    return subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=60)


def _hccn(devices, last_octet):
    return {d: f"192.98.{90 + d}.{last_octet}" for d in devices}


@pytest.fixture
def workdir(tmp_path):
    """tmp_path with a two-server table (8 cards each), a config file, a data folder and the fake trainer."""
    tables = [build_table(list(range(8)), f"10.0.0.{s + 1}", _hccn(range(8), s + 1)) for s in range(2)]
    (tmp_path / "cluster.json").write_text(json.dumps(merge_tables(tables)))
    (tmp_path / "one.json").write_text(json.dumps(build_table([0, 1], "10.9.9.9", _hccn(range(2), 9))))
    (tmp_path / "cfg.yaml").write_text("run: {}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    return tmp_path


def _dry_run_ranks(stdout):
    """[(cwd, env, command, log)] of each rank line of run_distribute_train.sh's DRY_RUN output."""
    ranks = []
    for line in stdout.splitlines():
        if not line.startswith("cd "):
            continue
        words = shlex.split(line)
        assert words[2] == "&&" and words[-3:-1] == [">>", words[-2]] and words[-1] == "2>&1"
        body = words[3:-3]
        n_env = next(i for i, w in enumerate(body) if "=" not in w or w.startswith("/"))
        ranks.append((words[1], dict(w.split("=", 1) for w in body[:n_env]), body[n_env:], words[-2]))
    return ranks


@pytest.mark.slow
@pytest.mark.parametrize("server", [0, 1])
def test_distribute_dry_run_numbers_ranks_globally(workdir, server):
    args = ["cluster.json", "caption", "cfg.yaml", "train.epochs=2", "data.root=data"]
    result = _run("run_distribute_train.sh", args, cwd=workdir, SERVER_ID=str(server), DRY_RUN="1", OUTPUT_DIR="out")
    assert result.returncode == 0, result.stderr
    ranks = _dry_run_ranks(result.stdout)
    assert len(ranks) == 8
    assert "export GLOG_v=3 HCCL_CONNECT_TIMEOUT=600" in result.stdout.splitlines()
    for device, (cwd, env, command, log) in enumerate(ranks):
        rank = 8 * server + device
        folder = str(workdir / "out" / f"rank_{rank}")
        assert env == {"DEVICE_ID": str(device), "RANK_ID": str(rank), "RANK_SIZE": "16",
                       "RANK_TABLE_FILE": str(workdir / "cluster.json")}
        assert cwd == str(workdir) and log == os.path.join(folder, "train.log")
        assert command[1:] == [os.path.join(ROOT, "train_caption.py"), "--config", str(workdir / "cfg.yaml"),
                               "--set", f"run.output_dir={folder}", f"checkpoint.dir={workdir / 'out' / 'checkpoints'}",
                               "train.epochs=2", f"data.root={workdir / 'data'}"]
    assert not (workdir / "out").exists()


@pytest.mark.slow
def test_distribute_output_dir_override_and_server_id_by_name(workdir):
    result = _run("run_distribute_train.sh", ["cluster.json", "vqa", "cfg.yaml", "run.output_dir=runs/a"],
                  cwd=workdir, SERVER_ID="10.0.0.2", DRY_RUN="1")
    ranks = _dry_run_ranks(result.stdout)
    assert [env["RANK_ID"] for _, env, _, _ in ranks] == [str(r) for r in range(8, 16)]
    assert ranks[0][0] == str(workdir)          # ranks run where the job was launched; outputs go per rank
    assert ranks[0][2][-3:] == ["--set", f"run.output_dir={workdir / 'runs' / 'a' / 'rank_8'}",
                                f"checkpoint.dir={workdir / 'runs' / 'a' / 'checkpoints'}"]   # one folder for all ranks
    result = _run("run_distribute_train.sh", ["cluster.json", "vqa", "cfg.yaml", "checkpoint.dir=/shared/ck"],
                  cwd=workdir, SERVER_ID="1", DRY_RUN="1", OUTPUT_DIR="out")
    assert _dry_run_ranks(result.stdout)[0][2][-2:] == [f"run.output_dir={workdir / 'out' / 'rank_8'}",
                                                        "checkpoint.dir=/shared/ck"]


@pytest.mark.slow
def test_distribute_needs_server_id_when_host_is_not_in_table(workdir):
    result = _run("run_distribute_train.sh", ["cluster.json", "vqa", "cfg.yaml"], cwd=workdir, DRY_RUN="1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "set SERVER_ID" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["cluster.json", "caption"], "usage:"),
    (["cluster.json", "translate", "cfg.yaml"], "usage:"),
    (["absent.json", "caption", "cfg.yaml"], "is not a file"),
    (["cluster.json", "caption", "absent.yaml"], "CONFIG="),
])
def test_distribute_argument_errors(workdir, args, words):
    result = _run("run_distribute_train.sh", args, cwd=workdir, SERVER_ID="0", DRY_RUN="1")
    assert result.returncode == 2 and words in result.stderr


@pytest.mark.slow
def test_distribute_refuses_a_faulty_table(workdir):
    table = json.loads((workdir / "cluster.json").read_text())
    table["server_count"] = "1"
    (workdir / "bad.json").write_text(json.dumps(table))
    result = _run("run_distribute_train.sh", ["bad.json", "vqa", "cfg.yaml"], cwd=workdir, SERVER_ID="0", DRY_RUN="1")
    assert result.returncode == 2 and "server_count is 1 but server_list has 2 servers" in result.stderr


def _process_gone(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_distribute_stops_all_ranks_when_one_fails(workdir):
    start = time.monotonic()
    result = _run("run_distribute_train.sh", ["one.json", "pretrain", "cfg.yaml"], cwd=workdir, OUTPUT_DIR="out",
                  OPT_TRAIN_CMD=f"{sys.executable} {workdir / 'fake_trainer.py'}", FAKE_FAIL_RANK="0", FAKE_SLEEP="1")
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 20, f"the launcher took {elapsed:.1f} s to notice the failed rank"
    assert "rank 0 exited with status 1" in result.stderr
    pids = [int(p) for p in (workdir / "out" / "rank_1" / "pids.txt").read_text().split()]
    assert len(pids) == 2 and all(_process_gone(pid) for pid in pids)
    for rank in (0, 1):
        seen = json.loads((workdir / "out" / f"rank_{rank}" / "seen.json").read_text())
        assert seen["cwd"] == str(workdir) and seen["device"] == str(rank)
        assert f"fake trainer rank {rank}" in (workdir / "out" / f"rank_{rank}" / "train.log").read_text()


@pytest.mark.slow
def test_distribute_succeeds_when_all_ranks_succeed(workdir):
    result = _run("run_distribute_train.sh", ["one.json", "pretrain", "cfg.yaml"], cwd=workdir, OUTPUT_DIR="out",
                  OPT_TRAIN_CMD=f"{sys.executable} {workdir / 'fake_trainer.py'}")
    assert result.returncode == 0, result.stderr
    assert "all 2 ranks of server 0 (10.9.9.9) finished" in result.stdout


@pytest.mark.slow
def test_msrun_dry_run_defaults(workdir):
    result = _run("run_msrun.sh", ["retrieval", "cfg.yaml", "train.lr=0.1"], cwd=workdir, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    out = str(workdir / "outputs" / "retrieval")
    assert shlex.split(result.stdout) == [
        "msrun", "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1", "--master_port=8118",
        f"--log_dir={out}/msrun_log", "--join=True", "python", os.path.join(ROOT, "train_retrieval.py"),
        "--config", str(workdir / "cfg.yaml"), "--set", f"run.output_dir={out}", "train.lr=0.1"]


@pytest.mark.slow
def test_msrun_dry_run_with_options(workdir):
    args = ["--worker_num", "8", "--local_worker_num=4", "--master_addr", "10.0.0.1", "--master_port=9000",
            "--node_rank", "1", "--log_dir", "logs", "--join", "False", "--cluster_time_out", "120", "vqa", "cfg.yaml"]
    result = _run("run_msrun.sh", args, cwd=workdir, DRY_RUN="1", OUTPUT_DIR="o")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout)[:9] == [
        "msrun", "--worker_num=8", "--local_worker_num=4", "--master_addr=10.0.0.1", "--master_port=9000",
        f"--log_dir={workdir / 'logs'}", "--join=False", "--node_rank=1", "--cluster_time_out=120"]
    assert shlex.split(result.stdout)[-2:] == ["--set", f"run.output_dir={workdir / 'o'}"]


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["vqa"], "usage:"),
    (["--worker_num", "0", "vqa", "cfg.yaml"], "--worker_num must be a positive integer"),
    (["--worker_num", "2", "--local_worker_num", "4", "vqa", "cfg.yaml"], "exceeds --worker_num"),
    (["--join", "yes", "vqa", "cfg.yaml"], "--join must be True or False"),
    (["--workers", "2", "vqa", "cfg.yaml"], "unknown option --workers"),
])
def test_msrun_argument_errors(workdir, args, words):
    result = _run("run_msrun.sh", args, cwd=workdir, DRY_RUN="1")
    assert result.returncode == 2 and words in result.stderr


@pytest.mark.slow
def test_standalone_dry_run_and_real_run(workdir):
    result = _run("run_standalone_train.sh", ["caption", "cfg.yaml", "a.b=1"], cwd=workdir, DRY_RUN="1",
                  PYTHON="python3")
    out = workdir / "outputs" / "caption"
    assert shlex.split(result.stdout) == [
        "python3", os.path.join(ROOT, "train_caption.py"), "--config", str(workdir / "cfg.yaml"),
        "--set", f"run.output_dir={out}", "a.b=1",
        "2>&1", "|", "tee", "-a", str(out / "train.log")]
    result = _run("run_standalone_train.sh", ["caption", "cfg.yaml"], cwd=workdir, RANK_TABLE_FILE="t.json",
                  RANK_SIZE="8", OPT_TRAIN_CMD=f"{sys.executable} {workdir / 'fake_trainer.py'}", FAKE_EXIT="3")
    assert result.returncode == 3
    assert "fake trainer rank 0" in result.stdout
    assert "fake trainer rank 0" in (out / "train.log").read_text()
    assert json.loads((out / "seen.json").read_text())["argv"][-1] == f"run.output_dir={out}"


@pytest.mark.slow
def test_eval_and_export_dry_runs(workdir):
    (workdir / "model.ckpt").write_text("")
    result = _run("run_eval.sh", ["vqa", "cfg.yaml", "model.ckpt", "eval.batch_size=4"], cwd=workdir, DRY_RUN="1",
                  PYTHON="python3")
    out = workdir / "outputs" / "vqa"
    assert shlex.split(result.stdout) == [
        "python3", os.path.join(ROOT, "eval.py"), "--task", "vqa", "--config", str(workdir / "cfg.yaml"),
        "--ckpt", str(workdir / "model.ckpt"), "--set", f"run.output_dir={out}", "eval.batch_size=4",
        "2>&1", "|", "tee", "-a", str(out / "eval.log")]
    result = _run("run_export.sh", ["caption", "model.ckpt", "opt_caption"], cwd=workdir, DRY_RUN="1", PYTHON="python3")
    assert shlex.split(result.stdout) == [
        "python3", os.path.join(ROOT, "export.py"), "--task", "caption", "--ckpt_file", str(workdir / "model.ckpt"),
        "--file_name", str(workdir / "opt_caption"), "--file_format", "MINDIR", "--batch_size", "1"]
    result = _run("run_export.sh", ["caption", "model.ckpt", "f", "8", "ONNX"], cwd=workdir, DRY_RUN="1")
    assert shlex.split(result.stdout)[-4:] == ["--file_format", "ONNX", "--batch_size", "8"]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, words", [
    ("run_standalone_train.sh", ["caption"], "usage:"),
    ("run_eval.sh", ["vqa", "cfg.yaml"], "usage:"),
    ("run_eval.sh", ["vqa", "cfg.yaml", "absent.ckpt"], "CKPT="),
    ("run_export.sh", ["caption", "cfg.yaml"], "usage:"),
    ("run_export.sh", ["caption", "cfg.yaml", "f", "many"], "BATCH_SIZE must be"),
    ("run_export.sh", ["caption", "cfg.yaml", "f", "1", "PB"], "FORMAT must be"),
])
def test_single_process_script_argument_errors(workdir, script, args, words):
    result = _run(script, args, cwd=workdir, DRY_RUN="1")
    assert result.returncode == 2 and words in result.stderr


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"RANK_TABLE_FILE": "t.json", "RANK_SIZE": "1"}, None),
    ({"RANK_TABLE_FILE": "t.json", "RANK_SIZE": "8"}, "rank_table"),
    ({"MS_WORKER_NUM": "2", "MS_ROLE": "MS_WORKER"}, "msrun"),
    ({"MS_ROLE": "MS_SCHED", "RANK_TABLE_FILE": "t.json", "RANK_SIZE": "8"}, "msrun"),
])
def test_launcher_from_env(env, expected):
    assert launcher_from_env(env) == expected


def test_single_process_dist_info_and_collectives(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("CPU") == DistInfo(rank=0, world_size=1, local_rank=0, device_id=0, is_main=True)
    assert not is_distributed()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    gathered = all_gather_numpy(array)
    assert len(gathered) == 1 and np.array_equal(gathered[0], array)
    barrier()


def test_rank_table_launch_errors_are_user_errors(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK_TABLE_FILE", "/tmp/t.json")
    monkeypatch.setenv("RANK_SIZE", "8")
    with pytest.raises(UserError, match="use scripts/run_msrun.sh on CPU"):
        init_distributed("CPU")
    with pytest.raises(UserError, match="DEVICE_ID is not"):
        init_distributed("Ascend")
    monkeypatch.setenv("DEVICE_ID", "first")
    with pytest.raises(UserError, match="DEVICE_ID='first' must be an integer"):
        init_distributed("CPU")


def test_distribute_device_id_is_the_logical_index(workdir):
    """A table of cards 4-7 (e.g. hccl_tools --visible_devices 4,5,6,7 in a container that maps them to 0-3):
    DEVICE_ID is 0..3, the physical id is only reported."""
    (workdir / "upper.json").write_text(json.dumps(build_table([4, 5, 6, 7], "10.9.9.8", _hccn(range(4, 8), 8))))
    result = _run("run_distribute_train.sh", ["upper.json", "pretrain", "cfg.yaml"], cwd=workdir, DRY_RUN="1",
                  OUTPUT_DIR="out")
    assert result.returncode == 0, result.stderr
    ranks = _dry_run_ranks(result.stdout)
    assert [(env["RANK_ID"], env["DEVICE_ID"]) for _, env, _, _ in ranks] == [(str(r), str(r)) for r in range(4)]
    assert "# rank 2 on device 2 (card 6 of the table)" in result.stdout


def test_distribute_hangup_stops_all_ranks(workdir):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OUTPUT_DIR="out", OPT_TRAIN_CMD=f"{sys.executable} {workdir / 'fake_trainer.py'}", FAKE_SLEEP="1")
    # a shell cannot trap a signal it was started with ignored: under `nohup` the test runner ignores SIGHUP, so
    # the launcher starts with the default disposition, as from a terminal
    launcher = subprocess.Popen(["bash", os.path.join(SCRIPTS, "run_distribute_train.sh"), "one.json", "pretrain",
                                 "cfg.yaml"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    pid_files = [workdir / "out" / f"rank_{r}" / "pids.txt" for r in (0, 1)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(p.exists() and p.read_text() for p in pid_files):
        time.sleep(0.1)
    pids = [int(p) for f in pid_files for p in f.read_text().split()]
    launcher.send_signal(signal.SIGHUP)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 129 and "hang-up: stopped all ranks" in err
    assert len(pids) == 4 and all(_process_gone(pid) for pid in pids)
