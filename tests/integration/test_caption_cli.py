"""train_caption.py (cross-entropy and SCST), train_vqa.py, eval.py --task caption|vqa and the Python API end to end
on the tiny config and the session's tiny demo data."""
import json
import os
import subprocess
import sys

import pytest

from src.data.build_mindrecord import build_mindrecord
from tests.helpers import ROOT
from tests.integration.conftest import COMPILE_CACHE

pytestmark = pytest.mark.slow  # every test runs the entry scripts as processes

PY = sys.executable


def run(*args):
    done = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GLOG_v": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def data_overrides(paths, out_dir, *extra):
    return ["--set", f"data.train={paths['train']}", f"data.val={paths['val']}", f"data.test={paths['test']}",
            f"data.vocab={paths['vocab']}", f"run.output_dir={out_dir}", f"run.compile_cache_dir={COMPILE_CACHE}",
            "train.steps=3", *extra]


def best_checkpoint(out_dir):
    best = os.path.join(out_dir, "best")
    (step,) = os.listdir(best)
    return os.path.join(best, step)


@pytest.fixture(scope="module")
def caption_run(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("caption"))
    run("train_caption.py", "--config", "config/caption/tiny.yaml", *data_overrides(tiny_data, out))
    return out


def test_caption_training_keeps_the_best_checkpoint_and_lowers_the_loss(caption_run):
    summary = json.load(open(os.path.join(caption_run, "summary.json"), encoding="utf-8"))
    assert summary["losses"]["caption"]["last"] < summary["losses"]["caption"]["first"]
    assert summary["evaluations"][-1]["step"] == 3 and "cider_d" in summary["evaluations"][-1]
    assert os.path.isdir(best_checkpoint(caption_run))


def test_caption_cli_prints_and_writes_captions_and_the_api_agrees(caption_run, tiny_data, tmp_path):
    image = os.path.join(tiny_data["root"], "images", "test_000000.jpg")
    out = str(tmp_path / "captions.jsonl")
    stdout = run("eval.py", "--task", "caption", "--ckpt", best_checkpoint(caption_run), "--image", image,
                 "--out", out, "--strategy", "greedy")
    printed = stdout.splitlines()[0].split("\t")
    assert printed[0] == image
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert rows == [{"image": image, "caption": printed[1]}]
    from src.inference.pipeline import Captioner
    captioner = Captioner(best_checkpoint(caption_run), strategy="greedy")
    assert captioner.caption([image, image]) == [printed[1]] * 2


def test_caption_scst_stage_runs_from_the_xe_checkpoint(caption_run, tiny_data, tmp_path):
    out = str(tmp_path / "scst")
    run("train_caption.py", "--config", "config/caption/tiny.yaml", "--stage", "scst",
        *data_overrides(tiny_data, out, "train.steps=1", f"checkpoint.init={best_checkpoint(caption_run)}",
                        'data.val=""'))
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert summary["steps_this_run"] == 1 and summary["skipped_steps"] == 0
    config = open(os.path.join(out, "config.yaml"), encoding="utf-8").read()
    assert "lr: 1.0e-05" in config


@pytest.fixture(scope="module")
def vqa_data(tiny_data, tmp_path_factory):
    """The tiny demo's VQA MindRecords (their manifests carry rationales)."""
    folder = tmp_path_factory.mktemp("vqa_data")
    vqa = {"vocab": tiny_data["vocab"]}
    for split in ("train", "val", "test"):
        vqa[split] = str(folder / f"{split}_vqa.mindrecord")
        build_mindrecord(os.path.join(tiny_data["root"], f"{split}_vqa.jsonl"), vqa[split], vqa["vocab"], workers=1)
    return vqa


def test_vqa_training_and_cli(vqa_data, tiny_data, tmp_path):
    vqa = vqa_data
    out = str(tmp_path / "vqa")
    run("train_vqa.py", "--config", "config/vqa/tiny.yaml", *data_overrides(vqa, out))
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert "exact_match" in summary["evaluations"][-1]
    image = os.path.join(tiny_data["root"], "images", "test_000000.jpg")
    answer = run("eval.py", "--task", "vqa", "--ckpt", best_checkpoint(out), "--image", image, "--question",
                 "图中有几个圆？").strip()
    from src.inference.pipeline import VQA
    assert VQA(best_checkpoint(out)).answer(image, "图中有几个圆？") == answer
    run("eval.py", "--task", "vqa", "--ckpt", best_checkpoint(out), "--closed_vocab", "--out_dir",
        str(tmp_path / "eval"))
    results = json.load(open(tmp_path / "eval" / "vqa_test.json", encoding="utf-8"))
    assert results["mode"] == "closed vocabulary" and results["n_questions"] == 24
    assert "majority_baseline" in results and len(results["examples"]) == 8


def test_vqa_with_rationale_trains_evaluates_and_prints_the_rationale(vqa_data, tiny_data, tmp_path):
    out = str(tmp_path / "vqa_rationale")
    run("train_vqa.py", "--config", "config/vqa/tiny.yaml", *data_overrides(vqa_data, out, "vqa.rationale=true"))
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert summary["losses"]["vqa"]["last"] < summary["losses"]["vqa"]["first"]
    assert "exact_match" in summary["evaluations"][-1]
    ckpt = best_checkpoint(out)
    run("eval.py", "--task", "vqa", "--ckpt", ckpt, "--out_dir", str(tmp_path / "eval"))
    rows = [json.loads(line) for line in open(tmp_path / "eval" / "vqa_test_predictions.jsonl", encoding="utf-8")]
    assert len(rows) == 24 and all(isinstance(r["rationale"], str) for r in rows)
    assert "| id | answer | reference | rationale |" in (tmp_path / "eval" / "vqa_test.md").read_text("utf-8")
    image = os.path.join(tiny_data["root"], "images", "test_000000.jpg")
    printed = run("eval.py", "--task", "vqa", "--ckpt", ckpt, "--image", image, "--question", "图中有几个圆？")
    lines = printed.rstrip("\n").split("\n")
    from src.inference.pipeline import VQA
    answer, rationale = VQA(ckpt).respond(image, "图中有几个圆？")
    assert lines == [answer, f"rationale: {rationale}"]
