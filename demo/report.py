"""Assemble the demo report: `python demo/report.py outputs/demo` -> outputs/demo/report.md.

Collects what the demo stages wrote, in stage order: the image tokenizer's reconstruction quality (vq/results.json),
the pre-training loss table (summary.md), each evaluation's markdown results and the text-to-image results
(t2i/eval/t2i_test.json: R-precision with its chance level and the real-image ceiling, the example grid with its
prompts). A stage that did not run is listed as missing rather than silently left out.
"""
import json
import os
import sys

VQ_RESULTS = "vq/results.json"
T2I_RESULTS = "t2i/eval/t2i_test.json"


def _missing(rel):
    return f"(not produced: {rel} is missing)"


def markdown_section(out_dir, rel):
    """The markdown file `rel` of a stage, as written."""
    with open(os.path.join(out_dir, rel), encoding="utf-8") as f:
        return f.read().strip()


def _read_json(out_dir, rel):
    with open(os.path.join(out_dir, rel), encoding="utf-8") as f:
        return json.load(f)


def vq_section(out_dir, rel=VQ_RESULTS):
    """Validation PSNR and codebook usage of the demo image tokenizer, and its reconstruction grid."""
    r = _read_json(out_dir, rel)
    lines = ["| metric | value |", "|---|---:|",
             f"| training steps | {r['step']} |",
             f"| validation images | {r['images']} |",
             f"| PSNR, mean over images (dB) | {r['psnr']:.2f} |",
             f"| PSNR of the mean squared error (dB) | {r['psnr_of_mean_mse']:.2f} |",
             f"| codes used | {r['used_codes']} / {r['codebook_size']} ({100 * r['used_fraction']:.1f} %) |",
             f"| codebook perplexity | {r['perplexity']:.1f} |",
             f"| codes per image | {r['codes_per_image']} |"]
    grid = os.path.join(os.path.dirname(rel), "reconstructions.png")
    if os.path.isfile(os.path.join(out_dir, grid)):
        lines += ["", f"Validation images next to their reconstructions: ![reconstructions]({grid})"]
    return "\n".join(lines)


def t2i_section(out_dir, rel=T2I_RESULTS):
    """R-precision (re-ranked, first sample, real images, chance), the tokenizer's PSNR and the example prompts."""
    r = _read_json(out_dir, rel)
    folder = os.path.dirname(rel)
    rows = [("generated, best of the re-ranked candidates", ""), ("generated, first sampled candidate",
                                                                   "_first_sample"),
            ("real test images (the scorer's ceiling)", "_real_images")]
    lines = [f"{r['n_prompts']} test prompts (first caption of each test image), {r['candidates']} candidates each; "
             f"R-precision pool {r['r_precision_pool']} (each prompt's image among {r['r_precision_pool'] - 1} "
             "images of other prompts), scored by the model's own contrastive towers.", "",
             "| images ranked | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|"]
    for name, suffix in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r[f'r_precision_r{k}{suffix}']:.1f}" for k in (1, 5, 10))
                     + " |")
    lines.append("| chance | " + " | ".join(f"{r[f'r_precision_chance_r{k}']:.1f}" for k in (1, 5, 10)) + " |")
    lines += ["", f"Image tokenizer on the test images (the fidelity ceiling of any generated image): PSNR "
              f"{r['psnr_db']:.2f} dB, {100 * r['codebook_used_fraction']:.1f} % of the codes used.", ""]
    if "likelihood_r1" in r:
        lines += [f"The image decoder on the real test images (teacher forcing, no sampling): {r['code_nll']:.3f} "
                  f"nats per code (perplexity {r['code_perplexity']:.1f}); each image's own prompt ranks first / "
                  f"in the top 5 / top 10 of its pool by the decoder's likelihood for "
                  + " / ".join(f"{r.get(f'likelihood_r{k}', float('nan')):.1f}" for k in (1, 5, 10))
                  + " % of the images.", ""]
    if "scene_exact" in r:
        lines += [f"What the images show, read back by the demo's shape reader (demo/scene_reader.py): the "
                  f"percentage of the prompts' {r['scene_objects']} objects drawn on the right side with the right "
                  "colour / shape / both, and of the images with every object right and nothing more (exact).", "",
                  "| images | colour | shape | colour and shape | exact images |", "|---|---:|---:|---:|---:|"]
        for name, suffix in rows[:2] + [("real test images (the reader's own accuracy)", "_real_images")]:
            lines.append(f"| {name} | " + " | ".join(f"{r[f'scene_{k}{suffix}']:.1f}" for k in
                                                     ("colour", "shape", "colour_and_shape", "exact")) + " |")
        lines.append("")
        if "scene_shape_best_candidate" in r:
            lines += [f"A perfect re-ranking of the {r['candidates']} candidates could reach: the right shape for "
                      f"{r['scene_shape_best_candidate']:.1f} % of the objects, an exact image for "
                      f"{r['scene_exact_any_candidate']:.1f} % of the prompts.", ""]
    examples = r.get("examples", [])
    if examples:
        grid = os.path.join(folder, f"t2i_{r['split']}_examples.png")
        lines += [f"Example grid (one row per prompt below, in order: the real image, then the candidates, best "
                  f"first): ![examples]({grid})", "", "| # | prompt | best generated image |", "|---:|---|---|"]
        lines += [f"| {k} | {e['prompt']} | ![{k}]({os.path.join(folder, e['file'])}) |"
                  for k, e in enumerate(examples)]
    return "\n".join(lines)


SECTIONS = [
    ("Image tokenizer (VQ-VAE): reconstruction of the demo validation images", VQ_RESULTS, vq_section),
    ("Pre-training: loss of each task, first vs last steps", "pretrain/summary.md", markdown_section),
    ("Retrieval, zero-shot after pre-training (demo test split)", "retrieval_zeroshot/retrieval.md",
     markdown_section),
    ("Retrieval after fine-tuning (demo test split)", "retrieval_finetuned/retrieval.md", markdown_section),
    ("Captioning after fine-tuning (demo test split)", "caption/caption_test.md", markdown_section),
    ("VQA after fine-tuning (demo test split)", "vqa/vqa_test.md", markdown_section),
    ("Text-to-image after the image-decoding fine-tune (demo test split)", T2I_RESULTS, t2i_section),
]


def build_report(out_dir):
    parts = ["# OPT demo report", "",
             "Produced by `bash scripts/run_demo.sh` on the built-in demo data (rendered shapes, Chinese captions, "
             "tone-sequence audio). IR = text-to-image, TR = image-to-text; chance rows are given with each table.",
             ""]
    for title, rel, section in SECTIONS:
        parts.append(f"## {title}")
        parts.append("")
        parts.append(section(out_dir, rel) if os.path.isfile(os.path.join(out_dir, rel)) else _missing(rel))
        parts.append("")
    return "\n".join(parts)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out_dir = argv[0] if argv else "outputs/demo"
    report = build_report(out_dir)
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(report + "\n")
    os.replace(path + ".tmp", path)
    print(report)
    print(f"\nreport written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
