"""A real two-worker msrun job on CPU through scripts/run_msrun.sh, exercising src/engine/distributed.py."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

# Started by msrun once per worker with `--config CFG --set run.output_dir=DIR`; writes DIR/rank_<rank>.json.
WORKER = """
import json, sys
import mindspore as ms
import numpy as np
from src.engine.distributed import all_gather_numpy, barrier, init_distributed, is_distributed

out_dir = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("run.output_dir="))
ms.set_context(mode=ms.GRAPH_MODE)
info = init_distributed("CPU")
floats = all_gather_numpy(np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * info.rank)
flags = all_gather_numpy(np.array([info.rank == 0, True]))
scalars = all_gather_numpy(np.int64(100 + info.rank))
try:
    all_gather_numpy(np.zeros(info.rank + 1, np.float32))
    shape_error = None
except ValueError as exc:
    shape_error = str(exc)
barrier()
result = {
    "info": [info.rank, info.world_size, info.local_rank, info.is_main], "distributed": is_distributed(),
    "floats": [a.tolist() for a in floats], "float_dtypes": [str(a.dtype) for a in floats],
    "flags": [a.tolist() for a in flags], "flag_dtype": str(flags[0].dtype),
    "scalars": [a.tolist() for a in scalars], "scalar_shape": list(scalars[0].shape), "shape_error": shape_error,
}
with open(f"{out_dir}/rank_{info.rank}.json", "w") as f:
    json.dump(result, f)
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_workers_gather_arrays(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "cfg.yaml").write_text("run: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_ID", "DRY_RUN"))}
    env.update(PYTHONPATH=ROOT, OPT_TRAIN_CMD=f"python {tmp_path / 'worker.py'}", OUTPUT_DIR=str(tmp_path / "out"))
    if os.path.dirname(sys.executable) not in env["PATH"].split(os.pathsep):
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    command = ["bash", os.path.join(ROOT, "scripts", "run_msrun.sh"), "--master_port", str(_free_port()),
               "--cluster_time_out", "60", "pretrain", "cfg.yaml"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    logs = tmp_path / "out" / "msrun_log"
    assert result.returncode == 0, result.stderr[-2000:] + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))

    expected_floats = [(np.arange(6).reshape(2, 3) + 10 * r).tolist() for r in range(2)]
    for rank in range(2):
        got = json.loads((tmp_path / "out" / f"rank_{rank}.json").read_text())
        assert got["info"] == [rank, 2, rank, rank == 0]
        assert got["distributed"] is True
        assert got["floats"] == expected_floats and got["float_dtypes"] == ["float32", "float32"]
        assert got["flags"] == [[True, True], [False, True]] and got["flag_dtype"] == "bool"
        assert got["scalars"] == [100, 101] and got["scalar_shape"] == []
        assert "rank 0: (1,), rank 1: (2,)" in got["shape_error"]
