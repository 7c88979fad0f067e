"""Assemble the demo report: `python -m demo.report OUT [--data DATA]` -> OUT/report.md (+ pictures in OUT/report/).

Reads what the stages of `bash scripts/run_demo.sh` wrote into OUT (default outputs/demo) and the demo data folder
DATA (default data/demo). The report opens with a one-screen summary, one row per capability: what ran, its
headline metric, the chance level or baseline where one is meaningful, and a link to the result file; a capability
whose results are missing is marked as not run, and the stages that did not run are listed by name. Then the time of
each stage (OUT/stages.jsonl, written by run_demo.sh), pictures (retrieval queries with their best images, captions
under their images, the text-to-image grid) and each stage's full results: the image tokenizer's reconstruction
quality, the pre-training loss table, each evaluation's tables and the text-to-image results (R-precision with its
chance level and the real-image ceiling, the scene reader's figures when eval ran with its metrics hook).
"""
import argparse
import json
import os
import sys

import numpy as np

from src.data.transforms import write_png
from src.utils.files import atomic_write_text
from src.utils.machine import commit_of, machine_description
from src.utils.results import markdown_table

VQ_RESULTS = "vq/results.json"
T2I_RESULTS = "t2i/eval/t2i_test.json"
PICTURES = "report"          # folder of OUT holding the composed pictures
THUMB = 96                   # pixels per image in the composed pictures
EXAMPLES = 8                 # examples per picture
HIT, MISS = (40, 170, 60), (200, 200, 200)   # frame colours in the retrieval picture


def _missing(rel):
    return f"(not produced: {rel} is missing)"


def markdown_section(out_dir, rel):
    """The markdown file `rel` of a stage, as written."""
    with open(os.path.join(out_dir, rel), encoding="utf-8") as f:
        return f.read().strip()


def _read_json(out_dir, rel):
    with open(os.path.join(out_dir, rel), encoding="utf-8") as f:
        return json.load(f)


def _exists(out_dir, *rels):
    return all(os.path.isfile(os.path.join(out_dir, rel)) for rel in rels)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(values, digits=1):
    return " / ".join(f"{v:.{digits}f}" for v in values)


def _link(out_dir, path):
    """A markdown link to `path` (absolute, or relative to out_dir) as seen from out_dir/report.md."""
    rel = os.path.relpath(path if os.path.isabs(path) else os.path.join(out_dir, path), out_dir)
    return f"[{os.path.basename(rel)}]({rel})"


# ------------------------------------------------------------------------------------------------------ summary


def _loss_change(summary):
    """'mlm -45 %, itc -89 %, ...' of a training summary's first and last loss per task."""
    return ", ".join(f"{task} {100.0 * (v['last'] - v['first']) / abs(v['first']):+.0f} %"
                     for task, v in summary["losses"].items() if v.get("first"))


def _recalls(r, direction):
    return [r[f"{direction}_r{k}"] for k in (1, 5, 10)]


def _retrieval_row(out_dir, rel, capability, trained):
    r = _read_json(out_dir, rel)
    what = f"{r['n_texts']} captions x {r['n_images']} test images, {r['mode']}" + (f" (k {r['k']})" if r["k"] else "")
    if trained:
        summary = _read_json(out_dir, "retrieval/summary.json")
        what = f"fine-tuned {summary['steps']} steps; " + what
    return {"capability": capability, "what ran": what,
            "headline": (f"IR R@1/5/10 {_fmt(_recalls(r['text_image'], 'ir'))}, "
                         f"TR {_fmt(_recalls(r['text_image'], 'tr'))}"),
            "chance / baseline": f"IR {_fmt(_recalls(r['chance'], 'ir'))}, TR {_fmt(_recalls(r['chance'], 'tr'))}",
            "result": _link(out_dir, rel.replace(".json", ".md"))}


def summary_rows(out_dir, data_dir):
    """One row per capability: (row dict, or None when it did not run, and the files it needs)."""
    rows = []

    def row(capability, needs, build, base=out_dir):
        rows.append((capability, needs, build() if all(os.path.isfile(os.path.join(base, n)) for n in needs)
                     else None))

    def data_row():
        meta = json.load(open(os.path.join(data_dir, "meta.json"), encoding="utf-8"))
        with open(os.path.join(data_dir, "vocab.txt"), encoding="utf-8") as f:
            vocab = sum(1 for line in f if line.strip())
        splits = meta["splits"]
        return {"capability": "demo data + vocabulary", "what ran": "python -m demo.data: " + ", ".join(
                    f"{s} {splits[s]['images']} images / {splits[s]['vqa_questions']} questions" for s in splits)
                + f"; {meta['captions_per_image']} captions per image, audio {meta['audio']['mode']}",
                "headline": f"vocabulary {vocab} tokens", "chance / baseline": "",
                "result": _link(out_dir, os.path.join(os.path.abspath(data_dir), "meta.json"))}
    row("demo data + vocabulary", ["meta.json", "vocab.txt"], data_row, data_dir)

    def vq_row():
        r = _read_json(out_dir, VQ_RESULTS)
        tokens = os.path.join(data_dir, "tokens")
        coded = sum(len(_read_jsonl(os.path.join(tokens, f))) for f in sorted(os.listdir(tokens))
                    if f.endswith(".jsonl")) if os.path.isdir(tokens) else 0
        return {"capability": "image tokenizer (VQ-VAE) + image codes",
                "what ran": f"{r['step']} steps; {coded} images encoded to {r['codes_per_image']} codes each",
                "headline": f"validation PSNR {r['psnr']:.2f} dB, {r['used_codes']} / {r['codebook_size']} codes used",
                "chance / baseline": "", "result": _link(out_dir, "vq/results.md")}
    row("image tokenizer (VQ-VAE) + image codes", [VQ_RESULTS], vq_row)

    def mindrecord_row():
        folder = os.path.join(os.path.abspath(data_dir), "mindrecord")
        reports = [_read_json(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".report.json")]
        accepted, rejected = sum(r["accepted"] for r in reports), sum(r["rejected"] for r in reports)
        return {"capability": "MindRecords", "what ran": f"{len(reports)} files built with --strict "
                "(captions with image codes, VQA)", "headline": f"{accepted} records, {rejected} rejected",
                "chance / baseline": "", "result": _link(out_dir, folder)}
    if os.path.isdir(os.path.join(data_dir, "mindrecord")):
        row("MindRecords", [], mindrecord_row)
    else:
        rows.append(("MindRecords", [os.path.join(data_dir, "mindrecord")], None))

    def pretrain_row():
        s = _read_json(out_dir, "pretrain/summary.json")
        return {"capability": "pre-training (small model)",
                "what ran": f"{s['steps']} steps, tasks {', '.join(s['losses'])}, {s['seconds'] / 60:.1f} min",
                "headline": "loss change " + _loss_change(s), "chance / baseline": "",
                "result": _link(out_dir, "pretrain/summary.md")}
    row("pre-training", ["pretrain/summary.json"], pretrain_row)
    row("zero-shot retrieval", ["retrieval_zeroshot/retrieval.json"],
        lambda: _retrieval_row(out_dir, "retrieval_zeroshot/retrieval.json", "zero-shot retrieval", False))
    row("retrieval fine-tune + eval", ["retrieval/summary.json", "retrieval_finetuned/retrieval.json"],
        lambda: _retrieval_row(out_dir, "retrieval_finetuned/retrieval.json", "retrieval fine-tune + eval", True))

    def caption_row():
        s, r = _read_json(out_dir, "caption/summary.json"), _read_json(out_dir, "caption/caption_test.json")
        predictions = _read_jsonl(os.path.join(out_dir, "caption", "caption_test_predictions.jsonl"))
        distinct = len({p["caption"] for p in predictions})
        return {"capability": "captioning fine-tune + eval",
                "what ran": f"fine-tuned {s['steps']} steps; {len(predictions)} test images, "
                            f"{r['decoding'].get('strategy', '')} decoding",
                "headline": f"CIDEr-D {r['cider_d']:.2f}, BLEU-4 {r['bleu4']:.2f}; {distinct} distinct captions",
                "chance / baseline": "", "result": _link(out_dir, "caption/caption_test.md")}
    row("captioning fine-tune + eval", ["caption/summary.json", "caption/caption_test.json",
                                        "caption/caption_test_predictions.jsonl"], caption_row)

    def vqa_row():
        s, r = _read_json(out_dir, "vqa/summary.json"), _read_json(out_dir, "vqa/vqa_test.json")
        baseline = r.get("majority_baseline")
        return {"capability": "VQA fine-tune + eval",
                "what ran": f"fine-tuned {s['steps']} steps from the captioner; {r['n_questions']} test questions, "
                            f"{r['mode']}",
                "headline": f"exact match {r['exact_match']:.1f} %",
                "chance / baseline": "" if baseline is None else
                f"majority answer ({r['majority_answer']}) {baseline:.1f} %",
                "result": _link(out_dir, "vqa/vqa_test.md")}
    row("VQA fine-tune + eval", ["vqa/summary.json", "vqa/vqa_test.json"], vqa_row)

    def t2i_row():
        r = _read_json(out_dir, T2I_RESULTS)
        steps = [_read_json(out_dir, f"{run}/summary.json")["steps"] for run in ("t2i", "t2i_cycle2")
                 if _exists(out_dir, f"{run}/summary.json")]
        headline = f"R-precision R@1/5/10 {_fmt([r[f'r_precision_r{k}'] for k in (1, 5, 10)])}"
        if "scene_shape" in r:
            headline += (f"; scene reader: colour {r['scene_colour']:.1f} %, shape {r['scene_shape']:.1f} %, "
                         f"exact images {r['scene_exact']:.1f} %")
        return {"capability": "text-to-image fine-tune + generation",
                "what ran": f"fine-tuned {' + '.join(map(str, steps))} steps; {r['n_prompts']} test prompts x "
                            f"{r['candidates']} candidates",
                "headline": headline,
                "chance / baseline": f"chance {_fmt([r[f'r_precision_chance_r{k}'] for k in (1, 5, 10)])}; real "
                                     f"images {_fmt([r[f'r_precision_r{k}_real_images'] for k in (1, 5, 10)])}",
                "result": _link(out_dir, T2I_RESULTS.replace(".json", ".md"))}
    row("text-to-image fine-tune + generation", [T2I_RESULTS], t2i_row)

    def export_row():
        manifest = _read_json(out_dir, "export/opt_caption_export.json")
        r = _read_json(out_dir, "export/eval/caption_test.json")
        baseline = ""
        if _exists(out_dir, "caption/caption_test.json"):
            baseline = f"checkpoint CIDEr-D {_read_json(out_dir, 'caption/caption_test.json')['cider_d']:.2f}"
        return {"capability": "MindIR export + run",
                "what ran": f"export.py --task caption: {len(manifest['graphs'])} {manifest['file_format']} graphs; "
                            "eval.py --mindir on the test split",
                "headline": f"CIDEr-D {r['cider_d']:.2f} from the exported graphs", "chance / baseline": baseline,
                "result": _link(out_dir, "export/eval/caption_test.md")}
    row("MindIR export + run", ["export/opt_caption_export.json", "export/eval/caption_test.json"], export_row)
    return rows


def summary_section(out_dir, data_dir):
    rows = summary_rows(out_dir, data_dir)
    table = [built or {"capability": name, "what ran": "**did not run**", "headline": "", "chance / baseline": "",
                       "result": "missing: " + ", ".join(needs)} for name, needs, built in rows]
    lines = [markdown_table(table, ["capability", "what ran", "headline", "chance / baseline", "result"]).rstrip()]
    skipped = [name for name, _, built in rows if built is None]
    lines += ["", "Stages that did not run: " + (", ".join(skipped) + "." if skipped else "none; every capability "
                                                                                          "ran.")]
    return "\n".join(lines), skipped


def stage_times_section(out_dir):
    path = os.path.join(out_dir, "stages.jsonl")
    if not os.path.isfile(path):
        return _missing("stages.jsonl")
    stages = _read_jsonl(path)
    rows = [{"stage": s["stage"], "minutes": s["seconds"] / 60} for s in stages]
    rows.append({"stage": "total (stages above)", "minutes": sum(s["seconds"] for s in stages) / 60})
    return markdown_table(rows, ["stage", "minutes"], floatfmt=".1f").rstrip()


# ----------------------------------------------------------------------------------------------------- pictures


def manifest_images(mindrecord):
    """{record id: image path} of the manifest a MindRecord was built from (its .meta.json names it)."""
    from src.data.manifest import read_manifest
    meta = json.load(open(f"{mindrecord}.meta.json", encoding="utf-8"))
    return {s["id"]: s.get("image_path") for s in read_manifest(meta["manifest"])}


def _thumbnail(path, size=THUMB, frame=None, width=3):
    from PIL import Image
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB").resize((size, size), Image.NEAREST))
    if frame is not None:
        pixels = pixels.copy()
        pixels[:width], pixels[-width:], pixels[:, :width], pixels[:, -width:] = frame, frame, frame, frame
    return pixels


def retrieval_picture(out_dir):
    """Example text queries with their best 5 images (own image framed green) from the fine-tuned retrieval
    evaluation (the zero-shot one when fine-tuning did not run): the markdown, or None without results."""
    for rel, name in (("retrieval_finetuned/retrieval.json", "fine-tuned"),  # noqa: B007 (name is read after the loop)
                      ("retrieval_zeroshot/retrieval.json", "zero-shot")):
        if _exists(out_dir, rel):
            break
    else:
        return None
    examples = _read_json(out_dir, rel).get("examples", [])[:EXAMPLES]
    if not examples:
        return None
    top = len(examples[0]["top"])
    pixels = np.stack([_thumbnail(image["source"], frame=HIT if image["hit"] else MISS)
                       for e in examples for image in e["top"]])
    picture = os.path.join(PICTURES, "retrieval_examples.png")
    write_png(pixels, os.path.join(out_dir, picture), columns=top, gap=4)
    rows = [{"row": k + 1, "query": e["query"], "own image at": next((f"#{j + 1}" for j, image in
                                                                      enumerate(e["top"]) if image["hit"]),
                                                                     f"not in the top {top}")}
            for k, e in enumerate(examples)]
    return (f"Text queries of the test split ({name} model, {_link(out_dir, rel)}), one row each, with their best "
            f"{top} images left to right; the query's own image is framed green.\n\n"
            + markdown_table(rows, ["row", "query", "own image at"]) + f"\n![retrieval examples]({picture})")


def caption_picture(out_dir, rel="caption/caption_test.json", name="caption"):
    """The first test images with their generated caption under them (and the first reference): markdown or None."""
    predictions_path = os.path.join(out_dir, rel.replace(".json", "_predictions.jsonl"))
    if not (_exists(out_dir, rel) and os.path.isfile(predictions_path)):
        return None
    images = manifest_images(_read_json(out_dir, rel)["data"])
    shown = _read_jsonl(predictions_path)[:EXAMPLES]
    cells = []
    for k, p in enumerate(shown):
        picture = os.path.join(PICTURES, f"{name}_{k:02d}.png")
        write_png(_thumbnail(images[p["id"]], size=2 * THUMB)[None], os.path.join(out_dir, picture))
        cells.append(f"![{p['id']}]({picture})<br>**{p['caption']}**<br>reference: {p['references'][0]}")
    columns = 4
    lines = ["| " + " | ".join([""] * columns) + " |", "|" + "---|" * columns]
    for i in range(0, len(cells), columns):
        row = cells[i:i + columns] + [""] * (columns - len(cells[i:i + columns]))
        lines.append("| " + " | ".join(row) + " |")
    return "Generated captions (bold) under their test images, with the first reference caption:\n\n" + \
        "\n".join(lines)


def t2i_picture(out_dir):
    if not _exists(out_dir, T2I_RESULTS):
        return None
    r = _read_json(out_dir, T2I_RESULTS)
    grid = os.path.join(os.path.dirname(T2I_RESULTS), f"t2i_{r['split']}_examples.png")
    if not os.path.isfile(os.path.join(out_dir, grid)):
        return None
    prompts = "\n".join(f"{k + 1}. {e['prompt']}" for k, e in enumerate(r.get("examples", [])))
    return (f"Generated images: one row per prompt (in this order), the real test image first, then the "
            f"{r['candidates']} candidates, best first.\n\n{prompts}\n\n![text-to-image examples]({grid})")


def pictures_section(out_dir):
    parts = []
    for title, build in (("Retrieval: queries and their best images", retrieval_picture),
                         ("Captioning: captions under their images", caption_picture),
                         ("Text-to-image: prompts and generated images", t2i_picture)):
        body = build(out_dir)
        parts += [f"### {title}", "", body if body is not None else "(not shown: that stage did not run)", ""]
    return "\n".join(parts).rstrip()


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
    ("Captioning with the exported MindIR graphs (demo test split)", "export/eval/caption_test.md",
     markdown_section),
]


def build_report(out_dir, data_dir="data/demo"):
    summary, _ = summary_section(out_dir, data_dir)
    parts = ["# OPT demo report", "",
             "Produced by `bash scripts/run_demo.sh` on the built-in demo data (rendered shapes, Chinese captions, "
             "tone-sequence audio). IR = text-to-image, TR = image-to-text; R@1/5/10 in percent.", "",
             "## Summary", "", summary, "",
             "## Time per stage", "", stage_times_section(out_dir), "",
             "## Pictures", "", pictures_section(out_dir), ""]
    for title, rel, section in SECTIONS:
        parts.append(f"## {title}")
        parts.append("")
        parts.append(section(out_dir, rel) if os.path.isfile(os.path.join(out_dir, rel)) else _missing(rel))
        parts.append("")
    return "\n".join(parts)


def results_page(out_dir, data_dir, command):
    """The measured figures of a demo run as a results page (docs/results/): command, commit, machine, date, the
    summary table (without links into the run's folder) and the time of every stage."""
    import datetime
    rows = summary_rows(out_dir, data_dir)
    table = [built or {"capability": name, "what ran": "did not run", "headline": "", "chance / baseline": ""}
             for name, _, built in rows]
    lines = ["# Demo results", "", f"Written by `{command}` (python -m demo.report --results) on "
             f"{datetime.date.today().isoformat()}, commit {commit_of()}.", "", f"Machine: {machine_description()}.",
             "", markdown_table(table, ["capability", "what ran", "headline", "chance / baseline"]).rstrip(), "",
             "## Time of each stage", "", stage_times_section(out_dir)]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m demo.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="outputs/demo", help="the demo's output folder (default "
                                                                       "outputs/demo)")
    parser.add_argument("--data", default="data/demo", help="the demo data folder (default data/demo)")
    parser.add_argument("--results", default=None, metavar="PAGE.md",
                        help="also write the measured figures as a results page (e.g. docs/results/demo.md)")
    parser.add_argument("--command", default="bash scripts/run_demo.sh",
                        help="the command that produced the run, named on the results page")
    args = parser.parse_args(argv)
    report = build_report(args.out, args.data)
    path = os.path.join(args.out, "report.md")
    atomic_write_text(path, report + "\n")
    print(report)
    print(f"\nreport written to {path}")
    if args.results:
        atomic_write_text(args.results, results_page(args.out, args.data, args.command))
        print(f"results page written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
