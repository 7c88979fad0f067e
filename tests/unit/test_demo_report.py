"""The demo report (python -m demo.report) on a small fake outputs tree in the stages' real file formats: the
summary has a row per capability with its headline and chance / baseline, the pictures are composed, and stages
that did not run are named as such."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from demo.data import generate_demo
from demo.report import build_report, main

def write_json(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A real (tiny) demo data folder with its vocabulary, token manifests and MindRecord side files."""
    root = tmp_path_factory.mktemp("report_data")
    generate_demo(root, 8, 4, 4, image_size=32, audio="tones", workers=1)
    write_text(str(root / "vocab.txt"), "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "红", "圆"]) + "\n")
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        lines = open(root / f"{split}.jsonl", encoding="utf-8").read().splitlines()
        assert len(lines) == n
        write_text(str(root / "tokens" / f"{split}.jsonl"), "\n".join(lines) + "\n")
        for name in (split, f"{split}_vqa"):
            write_json(str(root / "mindrecord" / f"{name}.mindrecord.report.json"), {"accepted": n, "rejected": 0})
    write_json(str(root / "mindrecord" / "test.mindrecord.meta.json"), {"manifest": str(root / "test.jsonl")})
    return root


def ids_of(data_dir):
    """The record ids of the test split, in manifest order."""
    return [json.loads(line)["id"] for line in open(data_dir / "test.jsonl", encoding="utf-8")]


def early_stages(out, data_dir):
    """What run_demo.sh --quick leaves: tokenizer, pre-training, zero-shot retrieval, stage times."""
    write_json(f"{out}/vq/results.json", {"step": 10, "images": 4, "psnr": 20.5, "psnr_of_mean_mse": 20.1,
                                          "perplexity": 3.0, "used_fraction": 0.25, "used_codes": 64,
                                          "codebook_size": 256, "codes_per_image": 64})
    losses = {"mlm": {"steps": 3, "first": 4.0, "last": 3.0}, "itc": {"steps": 3, "first": 2.0, "last": 1.0}}
    write_json(f"{out}/pretrain/summary.json", {"steps": 12, "seconds": 90.0, "losses": losses})
    write_text(f"{out}/pretrain/summary.md", "| task | steps |\n|---|---:|\n| mlm | 3 |\n")
    ids = ids_of(data_dir)
    recalls = {f"{d}_r{k}": v for d in ("ir", "tr") for k, v in ((1, 25.0), (5, 75.0), (10, 100.0))}
    chance = {f"{d}_r{k}": v for d in ("ir", "tr") for k, v in ((1, 25.0), (5, 100.0), (10, 100.0))}
    images = [os.path.join(data_dir, "images", f"{i}.jpg") for i in ids]
    examples = [{"query": "左边有一个红色的圆", "target": ids[0],
                 "top": [{"id": i, "source": s, "hit": i == ids[0]} for i, s in zip(ids[::-1], images[::-1])]}]
    write_json(f"{out}/retrieval_zeroshot/retrieval.json", {
        "mode": "itc_itm", "k": 4, "n_texts": 20, "n_images": 4, "text_image": recalls, "chance": chance,
        "examples": examples})
    write_text(f"{out}/retrieval_zeroshot/retrieval.md", "| retrieval | R@1 |\n|---|---:|\n| text→image (IR) | 25 |\n")
    write_text(f"{out}/stages.jsonl", "".join(json.dumps({"stage": f"{k}/6 x", "seconds": 60 * k}) + "\n"
                                              for k in (1, 2)))


def late_stages(out, data_dir):
    """What only the default and --full runs write: fine-tunes, captioning, VQA, t2i, the MindIR run."""
    ids = ids_of(data_dir)
    recalls = {f"{d}_r{k}": v for d in ("ir", "tr") for k, v in ((1, 50.0), (5, 100.0), (10, 100.0))}
    chance = {f"{d}_r{k}": v for d in ("ir", "tr") for k, v in ((1, 25.0), (5, 100.0), (10, 100.0))}
    write_json(f"{out}/retrieval/summary.json", {"steps": 100, "seconds": 60.0, "losses": {}})
    write_json(f"{out}/retrieval_finetuned/retrieval.json", {
        "mode": "itc_itm", "k": 8, "n_texts": 20, "n_images": 4, "text_image": recalls, "chance": chance,
        "examples": []})
    write_text(f"{out}/retrieval_finetuned/retrieval.md", "| x |\n|---|\n| y |\n")
    for run, steps in (("caption", 200), ("vqa", 300), ("t2i", 400)):
        write_json(f"{out}/{run}/summary.json", {"steps": steps, "seconds": 60.0, "losses": {}})
    mindrecord = str(data_dir / "mindrecord" / "test.mindrecord")
    caption = {"split": "test", "data": mindrecord, "bleu4": 0.41, "cider_d": 1.234, "decoding": {"strategy": "beam"}}
    write_json(f"{out}/caption/caption_test.json", caption)
    write_text(f"{out}/caption/caption_test.md", "caption table\n")
    write_text(f"{out}/caption/caption_test_predictions.jsonl", "".join(
        json.dumps({"id": i, "image_id": i, "caption": f"生成的{k % 2}", "references": [f"参考{k}"]},
                   ensure_ascii=False) + "\n" for k, i in enumerate(ids)))
    write_json(f"{out}/vqa/vqa_test.json", {"exact_match": 41.5, "n_questions": 12, "mode": "generative",
                                            "majority_baseline": 15.3, "majority_answer": "1"})
    write_text(f"{out}/vqa/vqa_test.md", "vqa table\n")
    t2i = {"split": "test", "n_prompts": 4, "candidates": 4, "r_precision_pool": 4, "psnr_db": 24.5,
           "codebook_used_fraction": 0.5, "scene_objects": 6,
           "examples": [{"prompt": "左边有一个红色的圆", "file": "t2i_test_examples/00.png"}]}
    for k, chance_k in ((1, 25.0), (5, 100.0), (10, 100.0)):
        t2i.update({f"r_precision_r{k}": 50.0, f"r_precision_r{k}_first_sample": 25.0,
                    f"r_precision_r{k}_real_images": 75.0, f"r_precision_chance_r{k}": chance_k})
    for suffix in ("", "_first_sample", "_real_images"):
        t2i.update({f"scene_{m}{suffix}": 50.0 for m in ("colour", "shape", "colour_and_shape", "exact")})
    write_json(f"{out}/t2i/eval/t2i_test.json", t2i)
    Image.new("RGB", (10, 10)).save(f"{out}/t2i/eval/t2i_test_examples.png")
    write_json(f"{out}/export/opt_caption_export.json", {"task": "caption", "file_format": "MINDIR",
                                                          "graphs": {"encoder": "a", "step": "b"}})
    write_json(f"{out}/export/eval/caption_test.json", dict(caption, cider_d=1.234))
    write_text(f"{out}/export/eval/caption_test.md", "exported caption table\n")


def summary_line(report, capability):
    (line,) = [row for row in report.splitlines() if row.startswith(f"| {capability} |")]
    return line


def test_quick_run_report_names_every_stage_that_did_not_run(tmp_path, data_dir):
    out = tmp_path / "out"
    early_stages(str(out), data_dir)
    report = build_report(str(out), str(data_dir))
    assert report.index("## Summary") < report.index("## Time per stage") < report.index("## Pictures")
    assert "vocabulary 7 tokens" in summary_line(report, "demo data + vocabulary")
    assert "train 8 images / 24 questions" in summary_line(report, "demo data + vocabulary")
    assert "validation PSNR 20.50 dB, 64 / 256 codes used" in report
    assert "16 images encoded to 64 codes each" in report
    assert "| MindRecords | 6 files built with --strict" in report and "32 records, 0 rejected" in report
    assert f"[mindrecord]({os.path.relpath(data_dir / 'mindrecord', out)})" in report   # links from out/report.md
    assert "loss change mlm -25 %, itc -50 %" in summary_line(report, "pre-training (small model)")
    line = summary_line(report, "zero-shot retrieval")
    assert "IR R@1/5/10 25.0 / 75.0 / 100.0" in line and "IR 25.0 / 100.0 / 100.0" in line   # recall, chance
    assert "[retrieval.md](retrieval_zeroshot/retrieval.md)" in line
    for capability in ("retrieval fine-tune + eval", "captioning fine-tune + eval", "VQA fine-tune + eval",
                       "text-to-image fine-tune + generation", "MindIR export + run"):
        assert "**did not run**" in summary_line(report, capability)
    assert ("Stages that did not run: retrieval fine-tune + eval, captioning fine-tune + eval, VQA fine-tune + eval, "
            "text-to-image fine-tune + generation, MindIR export + run.") in report
    assert "| 2/6 x | 2.0 |" in report and "| total (stages above) | 3.0 |" in report
    # the zero-shot retrieval picture: 1 query x 4 images of 96 px, 4 px apart; the own image is framed green
    assert "zero-shot model" in report and "| 1 | 左边有一个红色的圆 | #4 |" in report
    with Image.open(out / "report" / "retrieval_examples.png") as picture:
        assert picture.size == (4 * 96 + 3 * 4, 96)
        pixels = np.asarray(picture)
    assert tuple(pixels[0, 3 * 100 + 48]) == (40, 170, 60) and tuple(pixels[0, 48]) == (200, 200, 200)
    assert "(not shown: that stage did not run)" in report   # captions and t2i
    assert "(not produced: t2i/eval/t2i_test.json is missing)" in report


def test_full_report_has_a_row_and_a_picture_for_every_capability(tmp_path, data_dir):
    out = tmp_path / "out"
    early_stages(str(out), data_dir)
    late_stages(str(out), data_dir)
    assert main([str(out), "--data", str(data_dir)]) == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "**did not run**" not in report and "Stages that did not run: none; every capability ran." in report
    line = summary_line(report, "retrieval fine-tune + eval")
    assert "fine-tuned 100 steps" in line and "IR R@1/5/10 50.0 / 100.0 / 100.0" in line
    assert "CIDEr-D 1.23, BLEU-4 0.41; 2 distinct captions" in summary_line(report, "captioning fine-tune + eval")
    line = summary_line(report, "VQA fine-tune + eval")
    assert "exact match 41.5 %" in line and "majority answer (1) 15.3 %" in line
    line = summary_line(report, "text-to-image fine-tune + generation")
    assert "R-precision R@1/5/10 50.0 / 50.0 / 50.0" in line and "chance 25.0 / 100.0 / 100.0" in line
    assert "shape 50.0 %" in line and "fine-tuned 400 steps" in line
    line = summary_line(report, "MindIR export + run")
    assert "2 MINDIR graphs" in line and "CIDEr-D 1.23 from the exported graphs" in line
    assert "checkpoint CIDEr-D 1.23" in line
    # fine-tuned retrieval kept no examples here: the picture is not shown rather than drawn empty
    assert "Retrieval: queries and their best images\n\n(not shown" in report
    # captions under their images: one 192 px picture per test image, the caption in bold below it
    ids = ids_of(data_dir)
    assert f"![{ids[0]}](report/caption_00.png)<br>**生成的0**<br>reference: 参考0" in report
    with Image.open(out / "report" / "caption_03.png") as picture:
        assert picture.size == (192, 192)
    assert "![text-to-image examples](t2i/eval/t2i_test_examples.png)" in report and "1. 左边有一个红色的圆" in report
    assert "## Captioning with the exported MindIR graphs (demo test split)\n\nexported caption table" in report


def test_results_page_holds_command_machine_summary_and_stage_times(tmp_path, data_dir):
    out = tmp_path / "out"
    early_stages(str(out), data_dir)
    page = tmp_path / "results" / "demo.md"
    assert main([str(out), "--data", str(data_dir), "--results", str(page), "--command", "bash x.sh --y"]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Demo results\n\nWritten by `bash x.sh --y` (python -m demo.report --results) on ")
    assert f"Machine: {os.cpu_count()} x " in text and "MindSpore 2." in text
    assert "IR R@1/5/10 25.0 / 75.0 / 100.0" in summary_line(text, "zero-shot retrieval")
    assert "| did not run |" in summary_line(text, "MindIR export + run")
    assert "](" not in text.split("## Time of each stage")[0]   # no links into the run's folder
    assert "| total (stages above) | 3.0 |" in text
