"""The manifest: a JSONL file with one sample per line, the input every dataset builder reads.

Fields (paths are relative to the manifest's folder):
  id        str, required, unique in the file
  image     str, path of the image (absent only for audio- or text-only data)
  text      str, one caption; or
  captions  list of str, one or more captions
  audio     str, a .wav file or a .npy of frame features (T, D) float32
  regions   str, a .npz of pre-extracted region features and boxes of the image (model.image.mode: features;
            src/data/regions.py, docs/data_format.md)
  question  str, and answers: list of str (VQA; one line per question)
  answer_scores  list of numbers, one per answer (optional, e.g. VQA soft scores)
  rationales  list of str: explanations of the answer (optional; A-OKVQA style), for vqa.rationale training
  image_id  str, groups the questions of one image; defaults to id
  lang      "zh" or "en"; defaults to "zh"
Other keys are kept as they are.
"""

import json
import os

from src.errors import UserError
from src.utils.files import atomic_write

LANGS = ("zh", "en")
STRING_FIELDS = ("id", "image", "text", "audio", "question", "image_id", "lang", "regions")
STRING_LIST_FIELDS = ("captions", "answers", "rationales")
DERIVED_FIELDS = ("image_path", "audio_path", "regions_path")
REQUIRABLE_FIELDS = ("image", "captions", "audio", "question", "answers", "regions")


def captions_of(sample):
    """Return the captions of a sample, whether it holds `captions` or a single `text`."""
    if "captions" in sample:
        return list(sample["captions"])
    if "text" in sample:
        return [sample["text"]]
    return []


def check_sample(sample, where, required=()):
    """Raise UserError (naming `where`) if `sample` breaks the manifest format or lacks a `required` field."""
    if not isinstance(sample, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(sample).__name__}")
    if "id" not in sample:
        raise UserError(f"{where}: missing required field 'id'")
    for key in STRING_FIELDS:
        if key in sample and not isinstance(sample[key], str):
            shown = json.dumps(sample[key], ensure_ascii=False)
            raise UserError(f"{where}: field '{key}' must be a string, got {shown}")
    for key in STRING_LIST_FIELDS:
        value = sample.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise UserError(f"{where}: field '{key}' must be a list of strings")
    if sample["id"] == "":
        raise UserError(f"{where}: field 'id' is empty")
    if "text" in sample and "captions" in sample:
        raise UserError(f"{where}: has both 'text' and 'captions'; keep one of them")
    if any(not caption.strip() for caption in captions_of(sample)):
        raise UserError(f"{where}: empty caption; remove it or write the caption")
    if "answer_scores" in sample:
        scores = sample["answer_scores"]
        if not isinstance(scores, list) or len(scores) != len(sample.get("answers", [])) or not all(
            isinstance(score, (int, float)) and not isinstance(score, bool) for score in scores
        ):
            raise UserError(f"{where}: 'answer_scores' must be a list of numbers, one per answer")
    if sample.get("lang", LANGS[0]) not in LANGS:
        raise UserError(f"{where}: lang {sample['lang']!r} is not one of {', '.join(LANGS)}")
    for key in required:
        present = bool(captions_of(sample)) if key == "captions" else key in sample
        if not present:
            raise UserError(f"{where}: missing field '{key}'; this data needs {', '.join(required)}")


def read_manifest(path, required=()):
    """Read and validate a manifest; return its samples as dicts.

    Each returned sample has `captions` instead of `text`, `image_id` and `lang` filled with their defaults, and
    `image_path` / `audio_path`: absolute paths resolved against the manifest's folder (the relative `image` / `audio`
    are kept). `required` names fields every sample must have, from REQUIRABLE_FIELDS.
    """
    unknown = [key for key in required if key not in REQUIRABLE_FIELDS]
    if unknown:
        raise ValueError(f"cannot require {unknown}; choose from {REQUIRABLE_FIELDS}")
    if not os.path.isfile(path):
        raise UserError(f"manifest {path} not found")
    folder = os.path.dirname(os.path.abspath(path))
    samples, line_of_id = [], {}
    with open(path, encoding="utf-8-sig") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err}); save the manifest as UTF-8") from err
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as err:
            reason = f"{err.msg} at column {err.colno}"
            raise UserError(f"{where}: not valid JSON ({reason}); fix or remove the line") from err
        check_sample(sample, where, required)
        if sample["id"] in line_of_id:
            first = line_of_id[sample["id"]]
            raise UserError(f"{where}: id {sample['id']!r} already used on line {first}; ids must be unique")
        line_of_id[sample["id"]] = line_no
        samples.append(_resolved(sample, folder))
    return samples


def _resolved(sample, folder):
    """Return `sample` with text as captions, default image_id and lang, and absolute media paths."""
    sample = dict(sample)
    if "text" in sample:
        sample["captions"] = [sample.pop("text")]
    sample.setdefault("image_id", sample["id"])
    sample.setdefault("lang", LANGS[0])
    for key in ("image", "audio", "regions"):
        if key in sample:
            sample[f"{key}_path"] = os.path.normpath(os.path.join(folder, sample[key]))
    return sample


def write_manifest(path, samples):
    """Validate `samples` and write them to `path` as UTF-8 JSONL, through a temporary file and a rename.

    The derived keys image_path / audio_path are not written: reading the file derives them again.
    """
    line_of_id = {}
    for index, sample in enumerate(samples):
        where = f"sample {index} for {path}"
        check_sample(sample, where)
        if sample["id"] in line_of_id:
            first = line_of_id[sample["id"]]
            raise UserError(f"{path}: samples {first} and {index} (lines {first + 1} and {index + 1} of the file to "
                            f"write) have the same id {sample['id']!r}; ids must be unique")
        line_of_id[sample["id"]] = index
    with atomic_write(path) as f:
        for sample in samples:
            kept = {key: value for key, value in sample.items() if key not in DERIVED_FIELDS}
            f.write(json.dumps(kept, ensure_ascii=False) + "\n")
