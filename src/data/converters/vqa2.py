"""VQA v2: --questions and --annotations JSON files (v2_OpenEnded_mscoco_<subtype>_questions.json, ...).

One sample per question with its 10 human answers (blank answers left out and counted). Without --annotations (test
sets) the samples have no answers.
Image `<n>` is `--image_dir/COCO_<subtype>_<n:012d>.jpg`; the subtype (e.g. val2014) comes from the questions file's
`data_subtype` unless --data_subtype is given; test-dev2015 questions use the test2015 images
(`COCO_test2015_<n:012d>.jpg`), of which test-dev is a subset.
"""

import os

from src.data.converters.common import SOURCE, json_list, load_json
from src.errors import UserError

DEFAULT_LANG = "en"
# question subtypes whose images carry another subtype's file names: test-dev is a subset of the test2015 images
IMAGE_SUBTYPE = {"test-dev2015": "test2015"}


def add_arguments(parser):
    parser.add_argument("--questions", required=True, help="VQA v2 questions JSON")
    parser.add_argument("--annotations", help="VQA v2 annotations JSON (absent for test sets)")
    parser.add_argument("--image_dir", required=True, help="folder of the COCO images of this subtype")
    parser.add_argument("--data_subtype", help="image file subtype, e.g. train2014 (default: from the questions file)")


def run(args, report):
    return convert_vqa2(args.questions, args.annotations, args.image_dir, report, args.lang, args.data_subtype)


def _answers_by_question(annotations_json, report):
    """Return {question_id: [answer, ...]} from an annotations file."""
    answers, blank, blank_questions = {}, 0, 0
    for index, annotation in enumerate(json_list(load_json(annotations_json), "annotations", annotations_json)):
        annotation = annotation if isinstance(annotation, dict) else {}
        entry = f"{annotations_json} annotation [{index}] (question_id {annotation.get('question_id')!r})"
        given = annotation.get("answers")
        texts = [a.get("answer") for a in given if isinstance(a, dict)] if isinstance(given, list) else []
        kept = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
        if "question_id" not in annotation or not kept or not all(isinstance(t, str) for t in texts):
            report.bad(entry, "needs question_id and 'answers' with at least one non-blank 'answer' (strings)")
            continue
        if len(kept) < len(texts):
            blank += len(texts) - len(kept)
            blank_questions += 1
        answers[annotation["question_id"]] = kept
    if blank:
        report.note(f"{blank} blank answers of {blank_questions} questions in {annotations_json} left out; the "
                    "questions are kept with their other answers")
    return answers


def convert_vqa2(questions_json, annotations_json, image_dir, report, lang=DEFAULT_LANG, data_subtype=None):
    """Return one sample per question of a VQA v2 questions file."""
    data = load_json(questions_json)
    questions = json_list(data, "questions", questions_json)
    subtype = data_subtype or data.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise UserError(f"{questions_json} has no 'data_subtype'; pass --data_subtype, e.g. val2014")
    if subtype in IMAGE_SUBTYPE:
        report.note(f"{subtype} questions are about {IMAGE_SUBTYPE[subtype]} images: "
                    f"looking for COCO_{IMAGE_SUBTYPE[subtype]}_<image_id>.jpg")
        subtype = IMAGE_SUBTYPE[subtype]
    answers = _answers_by_question(annotations_json, report) if annotations_json else None
    samples, answered = [], set()
    for index, question in enumerate(questions):
        question = question if isinstance(question, dict) else {}
        question_id, text = question.get("question_id"), question.get("question")
        entry = f"{questions_json} question [{index}] (question_id {question_id!r})"
        has_text = isinstance(text, str) and text.strip()
        if question_id is None or not isinstance(question.get("image_id"), int) or not has_text:
            report.bad(entry, "needs question_id, an integer image_id and a non-empty question")
            continue
        if answers is not None and question_id not in answers:
            report.bad(entry, f"has no annotation in {annotations_json}")
            continue
        path = os.path.join(image_dir, f"COCO_{subtype}_{question['image_id']:012d}.jpg")
        if not os.path.isfile(path):
            report.bad(entry, f"image file {path} not found")
            continue
        sample = {
            "id": str(question_id),
            "image": os.path.abspath(path),
            "image_id": str(question["image_id"]),
            "question": text.strip(),
            "lang": lang,
            SOURCE: entry,
        }
        if answers is not None:
            sample["answers"] = answers[question_id]
            answered.add(question_id)
        samples.append(sample)
    if answers is not None and len(answers) > len(answered):
        report.note(f"{len(answers) - len(answered)} annotations of {annotations_json} match no converted question")
    return samples
