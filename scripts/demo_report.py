"""Assemble the demo report: `python scripts/demo_report.py outputs/demo` -> outputs/demo/report.md.

Collects what the demo stages wrote: the pre-training loss table (summary.md), and each evaluation's markdown results,
in stage order; a stage that did not run is listed as missing rather than silently left out.
"""
import os
import sys

SECTIONS = [
    ("Pre-training: loss of each task, first vs last steps", "pretrain/summary.md"),
    ("Retrieval, zero-shot after pre-training (demo test split)", "retrieval_zeroshot/retrieval.md"),
    ("Retrieval after fine-tuning (demo test split)", "retrieval_finetuned/retrieval.md"),
    ("Captioning after fine-tuning (demo test split)", "caption/caption_test.md"),
    ("VQA after fine-tuning (demo test split)", "vqa/vqa_test.md"),
]


def build_report(out_dir):
    parts = ["# OPT demo report", "",
             "Produced by `bash scripts/run_demo.sh` on the built-in demo data (rendered shapes, Chinese captions, "
             "tone-sequence audio). IR = text-to-image, TR = image-to-text; chance rows are given with each table.",
             ""]
    for title, rel in SECTIONS:
        path = os.path.join(out_dir, rel)
        parts.append(f"## {title}")
        parts.append("")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                parts.append(f.read().strip())
        else:
            parts.append(f"(not produced: {rel} is missing)")
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
