"""python -m demo.probe_image_encoder: labels from the scenes, the accuracy it reports (hand-computed), and a short run
on the session's tiny demo data that writes its config, metrics log and results."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

from demo.probe_image_encoder import probe_accuracy, scene_labels
from src.errors import UserError

PROBE = ["-m", "demo.probe_image_encoder"]


def test_scene_labels_fill_positions_and_leave_the_rest_empty():
    objects = [{"position": "left", "shape": "triangle", "colour": "blue"},
               {"position": "right", "shape": "circle", "colour": "orange"}]
    shapes, colours = scene_labels(objects, "scenes.jsonl 'a'")
    assert shapes.tolist() == [3, 0, 1] and colours.tolist() == [3, 0, 6]
    with pytest.raises(UserError, match="scenes.jsonl 'b': object .* is not a demo object"):
        scene_labels([{"position": "top", "shape": "circle", "colour": "red"}], "scenes.jsonl 'b'")


def test_probe_accuracy_counts_present_objects_and_whole_images():
    shapes = np.array([[1, 0, 2], [0, 3, 0]])
    colours = np.array([[4, 0, 5], [0, 1, 0]])
    shape_pred = np.array([[1, 0, 3], [0, 3, 2]])       # objects: right, wrong, right; one empty slot misread
    colour_pred = np.array([[4, 0, 5], [0, 2, 0]])      # objects: right, right, wrong
    result = probe_accuracy(shape_pred, colour_pred, shapes, colours)
    assert result["shape"] == pytest.approx(2 / 3) and result["colour"] == pytest.approx(2 / 3)
    assert result["exact_images"] == 0.0                # image 0: shape wrong; image 1: colour wrong and empty slot
    assert probe_accuracy(shapes, colours, shapes, colours)["exact_images"] == 1.0


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_short_probe_run_writes_config_log_and_results(tiny_data, tmp_path, stem):
    out = tmp_path / stem
    cmd = [sys.executable, *PROBE, "--config", os.path.join(ROOT, "config", "model", "tiny.yaml"),
           "--data", tiny_data["root"], "--out", str(out), "--eval_every", "3",
           "--set", "train.steps=6", "train.batch_size=4", f"model.image.stem={stem}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["stem"] == stem and results["held_out_images"] == 16 and results["train_images"] == 32
    assert [r["step"] for r in results["history"]] == [3, 6]
    assert results["chance"] == {"shape": pytest.approx(1 / 3), "colour": pytest.approx(1 / 6)}
    assert all(0.0 <= r[k] <= 1.0 for r in results["history"] for k in ("shape", "colour", "exact_images"))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == results["history"]
    assert "stem: " + stem in (out / "config.yaml").read_text()
    assert f"stem {stem}: after 6 steps" in done.stdout


def test_missing_scenes_file_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, *PROBE, "--data", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "scenes.jsonl not found" in done.stderr


def test_eval_every_below_one_is_a_clear_error(tiny_data, tmp_path):
    done = subprocess.run([sys.executable, *PROBE, "--data", tiny_data["root"], "--out", str(tmp_path),
                           "--eval_every", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--eval_every must be at least 1, got 0" in done.stderr
