"""OFA-style TSV with base64 images (tab-separated, image last):

  --kind caption: uniq_id, image_id, caption, [object labels,] image_base64
      several references in one caption are separated by `&&` (OFA's test files); rows of one image_id are merged
      into one sample with all their captions.
  --kind vqa:     uniq_id, image_id, question, answers, [object labels,] image_base64
      answers like `1.0|!+yes&&0.6|!+no` (confidence|!+answer); one sample per row, answers ordered by confidence,
      the confidences kept as `answer_scores`.

Each image_id's image is written once to --image_dir as `<image_id>.<format>` with its bytes unchanged.
"""

import os

from src.utils.progress import progress

from src.data.converters.common import SOURCE, save_base64_image
from src.errors import UserError

DEFAULT_LANG = "en"
MIN_COLUMNS = {"caption": 4, "vqa": 5}
ANSWER_SEPARATOR, CONFIDENCE_SEPARATOR = "&&", "|!+"


def add_arguments(parser):
    parser.add_argument("--tsv", required=True, help="OFA TSV file")
    parser.add_argument("--kind", required=True, choices=sorted(MIN_COLUMNS), help="caption or vqa columns")
    parser.add_argument("--image_dir", required=True, help="folder to write the decoded images to")


def run(args, report):
    return convert_ofa_tsv(args.tsv, args.kind, args.image_dir, report, args.lang)


def parse_answers(field):
    """`1.0|!+yes&&0.6|!+no` -> (["yes", "no"], [1.0, 0.6]), highest confidence first; ValueError if malformed."""
    pairs = []
    for part in field.split(ANSWER_SEPARATOR):
        confidence, separator, answer = part.partition(CONFIDENCE_SEPARATOR)
        if not separator or not answer.strip():
            raise ValueError(f"answer {part!r} is not 'confidence|!+answer'")
        pairs.append((float(confidence), answer.strip()))
    pairs.sort(key=lambda pair: -pair[0])
    return [answer for _, answer in pairs], [confidence for confidence, _ in pairs]


def _rows(tsv):
    """Yield (line number, columns) of a TSV file, skipping blank lines."""
    if not os.path.isfile(tsv):
        raise UserError(f"{tsv} not found")
    with open(tsv, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(progress(f, desc="reading rows", unit="row"), start=1):
            if line.strip():
                yield line_no, line.rstrip("\r\n").split("\t")


def convert_ofa_tsv(tsv, kind, image_dir, report, lang=DEFAULT_LANG):
    """Return the samples of an OFA caption or VQA TSV, writing its images to `image_dir`."""
    image_paths, image_errors, owner_of_path = {}, {}, {}
    samples, caption_sample = [], {}
    for line_no, columns in _rows(tsv):
        entry = f"{tsv} line {line_no} (uniq_id {columns[0]!r})"
        if len(columns) < MIN_COLUMNS[kind]:
            report.bad(entry, f"has {len(columns)} columns; a {kind} row needs at least {MIN_COLUMNS[kind]}")
            continue
        uniq_id, image_id, text = columns[0], columns[1], columns[2].strip()
        try:
            if not image_id.strip():
                raise ValueError("empty image_id")
            if kind == "caption":
                fields = {"captions": [c.strip() for c in text.split(ANSWER_SEPARATOR) if c.strip()]}
                if not fields["captions"]:
                    raise ValueError("empty caption")
            else:
                answers, scores = parse_answers(columns[3])
                if not text:
                    raise ValueError("empty question")
                fields = {"question": text, "answers": answers, "answer_scores": scores}
        except ValueError as err:
            report.bad(entry, str(err))
            continue
        if image_id not in image_paths and image_id not in image_errors:
            try:
                path = save_base64_image(columns[-1], image_dir, image_id)
            except ValueError as err:
                image_errors[image_id] = f"{err} (line {line_no})"
            else:
                if owner_of_path.setdefault(path, image_id) != image_id:
                    other = owner_of_path[path]
                    raise UserError(f"{entry}: image_ids {other!r} and {image_id!r} map to one file {path}")
                image_paths[image_id] = path
        if image_id in image_errors:
            report.bad(entry, f"image of image_id {image_id!r}: {image_errors[image_id]}")
            continue
        if kind == "caption" and image_id in caption_sample:
            caption_sample[image_id]["captions"].extend(fields["captions"])
            continue
        sample_id = image_id if kind == "caption" else uniq_id
        sample = {"id": sample_id, "image": os.path.abspath(image_paths[image_id]), "image_id": image_id, "lang": lang,
                  SOURCE: f"{tsv} line {line_no}"}
        samples.append({**sample, **fields})
        if kind == "caption":
            caption_sample[image_id] = samples[-1]
    report.note(f"{len(image_paths)} images written to {image_dir}")
    return samples
