"""Baidu FM-IQA: a JSON `{"train": [...], "val": [...]}` of `{question_id, image_id, Question, Answer}` items.

One sample per question. The images are COCO 2014 images: `--image_dir` is the folder holding train2014/ and
val2014/ (or all images directly); image `<n>` is found as `COCO_train2014_<n:012d>.jpg` or `COCO_val2014_<n:012d>.jpg`.
"""

import os

from src.data.converters.common import SOURCE, first_file, json_list, load_json

DEFAULT_LANG = "zh"
COCO_FOLDERS = ("train2014", "val2014")


def add_arguments(parser):
    parser.add_argument("--fmiqa", required=True, help="FM-IQA JSON file")
    parser.add_argument("--split", required=True, help="key of the split in the file: train or val")
    parser.add_argument("--image_dir", required=True, help="folder with train2014/ and val2014/ COCO images")


def run(args, report):
    return convert_fmiqa(args.fmiqa, args.split, args.image_dir, report, args.lang)


def coco_image_candidates(image_dir, number):
    """Paths where COCO 2014 image `number` may be, in the nested and the flat layout."""
    names = [(folder, f"COCO_{folder}_{number:012d}.jpg") for folder in COCO_FOLDERS]
    return [os.path.join(image_dir, folder, name) for folder, name in names] + [
        os.path.join(image_dir, name) for _, name in names
    ]


def convert_fmiqa(fmiqa_json, split, image_dir, report, lang=DEFAULT_LANG):
    """Return one sample per question of split `split` of an FM-IQA file."""
    items = json_list(load_json(fmiqa_json), split, fmiqa_json)
    samples = []
    for index, item in enumerate(items):
        item = item if isinstance(item, dict) else {}
        entry = f"{fmiqa_json} {split}[{index}] (question_id {item.get('question_id')!r})"
        question, answer, image_id = item.get("Question"), item.get("Answer"), item.get("image_id")
        if "question_id" not in item or not all(isinstance(t, str) and t.strip() for t in (question, answer)):
            report.bad(entry, "needs question_id and non-empty Question and Answer")
            continue
        try:
            number = int(image_id)
        except (TypeError, ValueError):
            report.bad(entry, f"image_id {image_id!r} is not a COCO image number")
            continue
        path = first_file(coco_image_candidates(image_dir, number))
        if path is None:
            report.bad(entry, f"COCO image {number} not found under {image_dir}")
            continue
        samples.append(
            {
                "id": str(item["question_id"]),
                "image": os.path.abspath(path),
                "image_id": str(number),
                "question": question.strip(),
                "answers": [answer.strip()],
                "lang": lang,
                SOURCE: entry,
            }
        )
    return samples
