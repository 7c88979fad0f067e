"""The README's main job, in its --quick form: data, MindRecords, pre-training, zero-shot retrieval, report."""
import os
import re
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_run_demo_quick_end_to_end(tmp_path):
    env = dict(os.environ, DEMO_DATA=str(tmp_path / "data"), DEMO_OUT=str(tmp_path / "out"), GLOG_v="3")
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_demo.sh"), "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    # the pre-training loss table has a row per quick-mode task, with finite losses
    for task in ("mlm", "itc", "itm"):
        assert re.search(rf"^\| {task} \| \d+ \| [\d.]+ \| [\d.]+ \|", report, re.M), task
    assert "text→image (IR)" in report and "chance" in report
    assert (tmp_path / "out" / "pretrain" / "checkpoints").is_dir()
    assert len(list((tmp_path / "data" / "mindrecord").glob("*.report.json"))) == 6
