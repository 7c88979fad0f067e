"""The README's main job, in its --quick form: data, a few image-tokenizer steps and image codes, MindRecords,
pre-training with image decoding, zero-shot retrieval, report (whose summary says which stages did not run)."""
import json
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
    # the pre-training loss table has a row per quick-mode task (image decoding included), with finite losses
    for task in ("mlm", "itc", "itm", "id"):
        assert re.search(rf"^\| {task} \| \d+ \| [\d.]+ \| [\d.]+ \|", report, re.M), task
    assert "text→image (IR)" in report and "chance" in report
    # the image tokenizer section: 10 steps on the 16 validation images, 64 codes per image
    assert re.search(r"^\| training steps \| 10 \|$", report, re.M) and "| codes per image | 64 |" in report
    assert re.search(r"^\| PSNR, mean over images \(dB\) \| \d+\.\d\d \|$", report, re.M)
    assert "(not produced: t2i/eval/t2i_test.json is missing)" in report  # text-to-image: not in --quick
    # the summary: a row per capability; the stages --quick leaves out are named as not run
    assert re.search(r"^\| zero-shot retrieval \| 80 captions x 16 test images, itc_itm \(k 4\) \| IR R@1/5/10 ",
                     report, re.M)
    assert ("Stages that did not run: retrieval fine-tune + eval, captioning fine-tune + eval, VQA fine-tune + eval, "
            "text-to-image fine-tune + generation, MindIR export + run.") in report
    assert "| demo data + vocabulary | python -m demo.data: train 96 images" in report
    stages = [json.loads(line)["stage"] for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()]
    assert [s.split()[0] for s in stages] == ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    assert (tmp_path / "out" / "report" / "retrieval_examples.png").is_file()
    assert (tmp_path / "out" / "pretrain" / "checkpoints").is_dir()
    assert len(list((tmp_path / "data" / "mindrecord").glob("*.report.json"))) == 6
    # the caption MindRecords were built from the token manifests: every sample has its image's codes
    for split, n in (("train", 96), ("val", 16), ("test", 16)):
        with open(tmp_path / "data" / "tokens" / f"{split}.jsonl", encoding="utf-8") as f:
            lines = [json.loads(line) for line in f]
        assert len(lines) == n and all(line["image_tokens"].startswith("tokens/") for line in lines)
        with open(tmp_path / "data" / "mindrecord" / f"{split}.mindrecord.meta.json", encoding="utf-8") as f:
            assert json.load(f)["has_image_tokens"] is True


def test_report_shows_the_tokenizer_and_text_to_image_results(tmp_path):
    from demo.report import build_report
    vq = {"step": 900, "images": 100, "psnr": 25.0168, "psnr_of_mean_mse": 24.2885, "perplexity": 145.499,
          "used_fraction": 255 / 256, "used_codes": 255, "codebook_size": 256, "codes_per_image": 64}
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "results.json").write_text(json.dumps(vq), encoding="utf-8")
    (tmp_path / "vq" / "reconstructions.png").write_bytes(b"")
    t2i = {"split": "test", "n_prompts": 100, "candidates": 4, "r_precision_pool": 100, "psnr_db": 24.5,
           "codebook_used_fraction": 0.5,
           "examples": [{"prompt": "左边有一个红色的圆", "file": "t2i_test_examples/00.png"}]}
    for k, chance in ((1, 1.0), (5, 5.0), (10, 10.0)):
        t2i.update({f"r_precision_r{k}": 10.0 * k, f"r_precision_r{k}_first_sample": 5.0 * k,
                    f"r_precision_r{k}_real_images": 20.0 * k, f"r_precision_chance_r{k}": chance})
    (tmp_path / "t2i" / "eval").mkdir(parents=True)
    (tmp_path / "t2i" / "eval" / "t2i_test.json").write_text(json.dumps(t2i, ensure_ascii=False), encoding="utf-8")
    no_data = str(tmp_path / "no_data")
    assert "shape reader" not in build_report(str(tmp_path), no_data)   # only with the scene reader's metrics hook
    t2i["scene_objects"] = 170
    for suffix, base in (("", 40.0), ("_first_sample", 20.0), ("_real_images", 90.0)):
        t2i.update({f"scene_colour{suffix}": base + 4, f"scene_shape{suffix}": base + 3,
                    f"scene_colour_and_shape{suffix}": base + 2, f"scene_exact{suffix}": base + 1})
    t2i.update({"code_nll": 2.0127, "code_perplexity": 7.4832, "likelihood_r1": 37.0, "likelihood_r5": 88.0,
                "likelihood_r10": 100.0, "scene_shape_best_candidate": 62.35, "scene_exact_any_candidate": 42.0})
    (tmp_path / "t2i" / "eval" / "t2i_test.json").write_text(json.dumps(t2i, ensure_ascii=False), encoding="utf-8")

    report = build_report(str(tmp_path), no_data)
    assert "2.013 nats per code (perplexity 7.5)" in report and "for 37.0 / 88.0 / 100.0 % of the images" in report
    assert "the right shape for 62.4 % of the objects, an exact image for 42.0 % of the prompts" in report
    assert "the percentage of the prompts' 170 objects drawn on the right side" in report
    assert "| generated, best of the re-ranked candidates | 44.0 | 43.0 | 42.0 | 41.0 |" in report
    assert "| generated, first sampled candidate | 24.0 | 23.0 | 22.0 | 21.0 |" in report
    assert "| real test images (the reader's own accuracy) | 94.0 | 93.0 | 92.0 | 91.0 |" in report
    assert "| PSNR, mean over images (dB) | 25.02 |" in report and "| codes used | 255 / 256 (99.6 %) |" in report
    assert "![reconstructions](vq/reconstructions.png)" in report
    assert "| generated, best of the re-ranked candidates | 10.0 | 50.0 | 100.0 |" in report
    assert "| generated, first sampled candidate | 5.0 | 25.0 | 50.0 |" in report
    assert "| real test images (the scorer's ceiling) | 20.0 | 100.0 | 200.0 |" in report
    assert "| chance | 1.0 | 5.0 | 10.0 |" in report and "PSNR 24.50 dB, 50.0 % of the codes used" in report
    assert "![examples](t2i/eval/t2i_test_examples.png)" in report
    assert "| 0 | 左边有一个红色的圆 | ![0](t2i/eval/t2i_test_examples/00.png) |" in report
    assert "(not produced: pretrain/summary.md is missing)" in report
