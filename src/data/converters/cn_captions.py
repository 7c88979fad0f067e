"""Chinese caption sets: Flickr30K-CN / COCO-CN style, or Chinese-CLIP style.

Flickr30K-CN / COCO-CN: --image_list (one image name per line: the split) and --captions (lines
`image_name#k<TAB>caption`, all splits may share one file). Chinese-CLIP: --texts_jsonl (lines
`{"text_id", "text", "image_ids"}`; texts with `"image_ids": []`, found in test splits, are counted and left out) with
images `<image_id><image_ext>` in --image_dir, or extracted there first from
--imgs_tsv (lines `image_id<TAB>base64`). One sample per image with all its captions.
"""

import hashlib
import json
import os
from collections import defaultdict

from src.utils.progress import progress

from src.data.converters.common import (SOURCE, decode_base64_image, first_file, stem, with_suffix,
                                        write_image_bytes)
from src.errors import UserError

DEFAULT_LANG = "zh"
SHOWN_TEXT_IDS = 10


def add_arguments(parser):
    parser.add_argument("--image_list", help="Flickr30K-CN / COCO-CN: file of image names, one per line")
    parser.add_argument("--captions", help="Flickr30K-CN / COCO-CN: caption file, lines image_name#k<TAB>caption")
    parser.add_argument("--texts_jsonl", help="Chinese-CLIP: <split>_texts.jsonl")
    parser.add_argument("--imgs_tsv", help="Chinese-CLIP: <split>_imgs.tsv to extract into --image_dir first")
    parser.add_argument("--image_dir", nargs="+", required=True, help="image folder(s), searched in order")
    parser.add_argument("--image_ext", default=".jpg", help="extension of image names given without one (.jpg)")


def run(args, report):
    if args.texts_jsonl and not (args.image_list or args.captions):
        if len(args.image_dir) != 1:
            raise UserError("--texts_jsonl takes one --image_dir")
        image_dir = args.image_dir[0]
        return convert_texts_jsonl(args.texts_jsonl, image_dir, report, args.lang, args.image_ext, args.imgs_tsv)
    if args.image_list and args.captions and not (args.texts_jsonl or args.imgs_tsv):
        return convert_caption_lines(args.image_list, args.captions, args.image_dir, report, args.lang, args.image_ext)
    raise UserError("cn-captions needs either --image_list with --captions, or --texts_jsonl (and maybe --imgs_tsv)")


def _text_lines(path):
    """Yield (line number, line without its newline) of a UTF-8 text file, skipping blank lines."""
    if not os.path.isfile(path):
        raise UserError(f"{path} not found")
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                yield line_no, line.rstrip("\r\n")


def convert_caption_lines(image_list, caption_file, image_dirs, report, lang=DEFAULT_LANG, image_ext=".jpg"):
    """Return one sample per image of `image_list`, with its captions from `caption_file`."""
    listed = [with_suffix(line.strip(), image_ext) for _, line in _text_lines(image_list)]
    names = list(dict.fromkeys(listed))
    if len(names) < len(listed):
        report.note(f"{len(listed) - len(names)} repeated names in {image_list} counted once")
    wanted = set(names)
    captions, other_images = defaultdict(list), 0
    for line_no, line in _text_lines(caption_file):
        entry = f"{caption_file} line {line_no}"
        key, _, caption = line.partition("\t")
        name = key.split("#", 1)[0].strip()
        if not name or not caption.strip():
            report.bad(entry, "expected 'image_name#k<TAB>caption'")
        elif with_suffix(name, image_ext) in wanted:
            captions[with_suffix(name, image_ext)].append(caption.strip())
        else:
            other_images += 1
    report.note(f"{other_images} captions of images not in {image_list} left out")
    samples = []
    for name in names:
        entry = f"{image_list} image {name}"
        path = first_file(os.path.join(folder, name) for folder in image_dirs)
        if not captions[name]:
            report.bad(entry, f"has no caption in {caption_file}")
        elif path is None:
            report.bad(entry, f"image file not found in {' '.join(image_dirs)}")
        else:
            sample = {"id": stem(name), "image": os.path.abspath(path), "captions": captions[name], "lang": lang}
            samples.append({**sample, SOURCE: entry})
    return samples


def extract_imgs_tsv(imgs_tsv, image_dir, report):
    """Write the images of a Chinese-CLIP `<split>_imgs.tsv` into `image_dir`; return ({image_id: path}, conflicts).

    An image_id given twice with the same image bytes is written once and counted in a note; with different bytes
    it is a bad entry naming both lines, and (with --skip_bad) the id is left out altogether, `conflicts` mapping it
    to the reason, since neither image can be trusted to be the one its texts describe.
    """
    paths, first, conflicts, repeats, owner_of_path = {}, {}, {}, 0, {}
    for line_no, line in progress(_text_lines(imgs_tsv), desc="extracting images", unit="image"):
        image_id, _, data = line.partition("\t")
        entry = f"{imgs_tsv} line {line_no} (image_id {image_id!r})"
        if not data:
            report.bad(entry, "expected 'image_id<TAB>base64'")
            continue
        try:
            raw, suffix = decode_base64_image(data)
        except ValueError as err:
            report.bad(entry, str(err))
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if image_id in first:
            first_line, first_digest = first[image_id]
            if digest == first_digest:
                repeats += 1
                continue
            reason = (f"image_id {image_id!r} is also on line {first_line} with a different image; "
                      f"keep one of lines {first_line} and {line_no}")
            conflicts[image_id] = f"{imgs_tsv} lines {first_line} and {line_no} give it different images"
            if image_id in paths:
                os.remove(paths.pop(image_id))
            report.bad(entry, reason)
            continue
        first[image_id] = (line_no, digest)
        path = write_image_bytes(raw, suffix, image_dir, image_id)
        if owner_of_path.setdefault(path, image_id) != image_id:
            other = owner_of_path[path]
            raise UserError(f"{entry}: image_ids {other!r} (line {first[other][0]}) and {image_id!r} map to one file "
                            f"{path}; rename one of them")
        paths[image_id] = path
    if repeats:
        report.note(f"{repeats} repeated lines of {imgs_tsv} (same image_id, same image) counted once")
    return paths, conflicts


def convert_texts_jsonl(texts_jsonl, image_dir, report, lang=DEFAULT_LANG, image_ext=".jpg", imgs_tsv=None):
    """Return one sample per image referenced by a Chinese-CLIP `<split>_texts.jsonl`."""
    extracted, conflicts = extract_imgs_tsv(imgs_tsv, image_dir, report) if imgs_tsv else (None, {})
    captions, without_image = defaultdict(list), []
    for line_no, line in _text_lines(texts_jsonl):
        entry = f"{texts_jsonl} line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            report.bad(entry, f"not valid JSON ({err.msg})")
            continue
        record = record if isinstance(record, dict) else {}
        text, image_ids = record.get("text"), record.get("image_ids")
        if not isinstance(text, str) or not text.strip() or not isinstance(image_ids, list):
            report.bad(entry, "needs a non-empty 'text' and a list 'image_ids'")
            continue
        if not image_ids:
            without_image.append(str(record.get("text_id", f"line {line_no}")))
            continue
        for image_id in image_ids:
            captions[str(image_id)].append(text.strip())
    samples = []
    for image_id, texts in captions.items():
        if extracted is None:
            path = first_file([os.path.join(image_dir, image_id + image_ext)])
        else:
            path = extracted.get(image_id)
        if image_id in conflicts:
            report.bad(f"{texts_jsonl} image_id {image_id}", conflicts[image_id])
        elif path is None:
            report.bad(f"{texts_jsonl} image_id {image_id}", f"image not found in {imgs_tsv or image_dir}")
        else:
            sample = {"id": image_id, "image": os.path.abspath(path), "captions": texts, "lang": lang}
            samples.append({**sample, SOURCE: f"{texts_jsonl} image_id {image_id}"})
    if without_image:
        shown = ", ".join(without_image[:SHOWN_TEXT_IDS]) + (", ..." if len(without_image) > SHOWN_TEXT_IDS else "")
        report.note(f"{len(without_image)} texts of {texts_jsonl} with \"image_ids\": [] left out (text_id {shown}): "
                    "a sample is one image with its texts, and a text without its image cannot be scored in retrieval")
    if extracted is not None:
        report.note(f"{len(set(extracted) - set(captions))} images of {imgs_tsv} have no text and are left out")
    return samples
