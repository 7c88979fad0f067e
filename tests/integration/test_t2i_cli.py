"""eval.py --task t2i end to end on an untrained tiny OPT model and an untrained tiny VQ tokenizer (their checkpoints
are written directly, in the trainers' run-folder layout): a prompt gives a valid PNG, a manifest split gives the
report, a bad --vq path gives exit code 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # every test runs eval.py as a process

PROMPT = "左边有一个红色的圆"
CHARS = "左右中边有一个红绿蓝色的圆三角形正方"
VQ_SETTINGS = ["vq.image_size=32", "vq.downsample=8", "vq.codebook_size=16", "vq.code_dim=8", "vq.hidden=8",
               "vq.res_blocks=1"]


def save_run(run_dir, cfg, net):
    """A trainer-style run folder: <run>/config.yaml and <run>/checkpoints/step_00000001; returns the step dir."""
    from src.config import save_config
    from src.weights.checkpoint import save_checkpoint
    save_config(cfg, str(run_dir))
    return save_checkpoint(str(run_dir / "checkpoints" / "step_00000001"), net.parameters_dict(), step=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from src.config import load_config
    from src.data.tokenizer import Tokenizer
    from src.models.opt import build_model
    from src.models.vq import build_vq
    root = tmp_path_factory.mktemp("t2i")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS]) + "\n", encoding="utf-8")
    cfg = load_config(os.path.join(ROOT, "config", "pretrain", "tiny.yaml"), [
        f"data.vocab={vocab}", f"model.text.vocab_size={Tokenizer(str(vocab)).vocab_size}",
        f"run.output_dir={root / 'opt'}", "run.mode=pynative", "t2i.candidates=2"])
    opt = save_run(root / "opt", cfg, build_model(cfg.model))
    vq_cfg = load_config(os.path.join(ROOT, "config", "pretrain", "tiny.yaml"), VQ_SETTINGS)
    vq = save_run(root / "vq", vq_cfg, build_vq(vq_cfg.vq))
    return {"root": root, "opt": opt, "vq": vq}


def run(*args):
    return subprocess.run([sys.executable, "eval.py", "--task", "t2i", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "GLOG_v": "3"})


def test_prompt_gives_a_png_of_the_vq_resolution(checkpoints, tmp_path):
    from PIL import Image
    out, grid = tmp_path / "x.png", tmp_path / "grid.png"
    done = run("--ckpt", checkpoints["opt"], "--vq", checkpoints["vq"], "--text", PROMPT, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    path, scores = done.stdout.strip().splitlines()[-1].split("\t")
    assert path == str(out) and len(scores.split()) == 2
    assert float(scores.split()[0]) >= float(scores.split()[1])   # best first
    done = run("--ckpt", checkpoints["opt"], "--vq", checkpoints["vq"], "--text", PROMPT, "--out", str(grid), "--grid")
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(grid) as image:
        assert image.size == (2 * 32 + 2, 32)   # two candidates, 2 px apart
        first = np.asarray(image)[:, :32]
    with Image.open(out) as image:
        np.testing.assert_array_equal(first, np.asarray(image))   # same seed: the best candidate comes first


def test_split_evaluation_writes_metrics_and_examples(checkpoints, tmp_path):
    from PIL import Image

    from demo.data import SceneObject, place_objects, render_scene
    prompts = ["左边有一个红色的圆", "右边有一个蓝色的三角形", "中间有一个绿色的正方形"]
    objects = [("red", "circle", "left"), ("blue", "triangle", "right"), ("green", "square", "middle")]
    with open(tmp_path / "test.jsonl", "w", encoding="utf-8") as f, open(tmp_path / "scenes.jsonl", "w") as s:
        for i, (prompt, (colour, shape, side)) in enumerate(zip(prompts, objects)):
            drawn = (SceneObject(colour, shape, "big", side),)
            render_scene(drawn, place_objects(drawn, 96, np.random.default_rng(i)), [235, 235, 235], 96).save(
                tmp_path / f"{i}.png")
            f.write(json.dumps({"id": f"s{i}", "image": f"{i}.png", "captions": [prompt, "别的"]},
                               ensure_ascii=False) + "\n")
            s.write(json.dumps({"id": f"s{i}", "objects": [{"colour": colour, "shape": shape, "position": side}]})
                    + "\n")
    out_dir = tmp_path / "eval"
    done = run("--ckpt", checkpoints["opt"], "--vq", checkpoints["vq"], "--data", str(tmp_path / "test.jsonl"),
               "--out_dir", str(out_dir), "--examples", "2", "--metrics_hook", "demo.scene_reader:t2i_metrics")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(out_dir / "t2i_test.json", encoding="utf-8"))
    assert results["n_prompts"] == 3 and results["r_precision_pool"] == 3 and results["candidates"] == 2
    assert results["r_precision_chance_r1"] == pytest.approx(100 / 3) and "r_precision_r5" not in results
    for suffix in ("", "_first_sample", "_real_images"):
        assert results[f"r_precision_r1{suffix}"] in (0.0, pytest.approx(100 / 3), pytest.approx(200 / 3), 100.0)
    assert np.isfinite(results["psnr_db"]) and results["filled_cells"] == 0
    # the untrained decoder spreads its probability over the 16 codes + 3 specials: about log(19) nats per code
    assert results["code_nll"] == pytest.approx(np.log(19), abs=0.3)
    assert results["code_perplexity"] == pytest.approx(np.exp(results["code_nll"]), rel=1e-9)
    assert results["likelihood_r1"] in (0.0, pytest.approx(100 / 3), pytest.approx(200 / 3), 100.0)
    # the demo's scene reader through its metrics hook: the real images (resized to the VQ's 32 px) read back as
    # their scenes, in record order
    assert results["scene_objects"] == 3
    assert results["scene_found_real_images"] == results["scene_colour_real_images"] == 100.0
    for suffix in ("", "_first_sample"):
        assert 0.0 <= results[f"scene_colour_and_shape{suffix}"] <= results[f"scene_colour{suffix}"] <= 100.0
        assert results[f"scene_shape{suffix}"] <= results["scene_shape_best_candidate"]   # the best of both
        assert results[f"scene_exact{suffix}"] <= results["scene_exact_any_candidate"]
    assert [e["prompt"] for e in results["examples"]] == prompts[:2]
    with Image.open(out_dir / "t2i_test_examples.png") as grid:   # rows: the real image, then 2 candidates
        assert grid.size == (3 * 32 + 2 * 2, 2 * 32 + 2)
    assert os.path.isfile(out_dir / results["examples"][0]["file"])
    report = open(out_dir / "t2i_test.md", encoding="utf-8").read()
    assert "r_precision_r1" in report and prompts[0] in report and results["examples"][0]["file"] in report


def test_bad_vq_path_is_exit_code_2(checkpoints, tmp_path):
    missing = str(tmp_path / "no_such_vq")
    done = run("--ckpt", checkpoints["opt"], "--vq", missing, "--text", PROMPT, "--out", str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (f"error: VQ checkpoint {missing} does not exist; give a step "
                                                    "directory such as <run>/checkpoints/step_00000480")
    assert not os.path.exists(tmp_path / "x.png")
