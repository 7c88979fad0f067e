"""COCO captions: `captions_<split>2014.json`, or Karpathy's `dataset_coco.json` with --split.

One sample per image with all its captions. `--image_dir` is the folder of the images (COCO JSON) or the folder that
holds each image's `filepath` folder (Karpathy JSON, e.g. the folder above train2014/ and val2014/).
"""

import os
from collections import defaultdict

from src.data.converters.common import SOURCE, json_list, load_json, stem
from src.errors import UserError

DEFAULT_LANG = "en"
KARPATHY_SPLITS = ("train", "val", "test", "restval")


def add_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="COCO captions JSON (images + annotations)")
    source.add_argument("--karpathy", help="Karpathy split JSON (dataset_coco.json)")
    parser.add_argument("--image_dir", required=True, help="image folder (COCO) or image root (Karpathy)")
    parser.add_argument("--split", nargs="+", choices=KARPATHY_SPLITS, help="Karpathy splits, e.g. train restval")


def run(args, report):
    if args.karpathy:
        if not args.split:
            raise UserError("--karpathy needs --split (one or more of train val test restval)")
        return convert_karpathy(args.karpathy, args.image_dir, args.split, report, args.lang)
    if args.split:
        raise UserError("--split applies to --karpathy only; a COCO captions file is one split already")
    return convert_coco_captions(args.captions, args.image_dir, report, args.lang)


def convert_coco_captions(captions_json, image_dir, report, lang=DEFAULT_LANG):
    """Return one sample per image of a COCO captions file."""
    data = load_json(captions_json)
    images, annotations = json_list(data, "images", captions_json), json_list(data, "annotations", captions_json)
    file_names = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str) or "id" not in image:
            report.bad(f"{captions_json} images[{index}]", "needs 'id' and 'file_name'")
            continue
        file_names[image["id"]] = image["file_name"]
    captions = defaultdict(list)
    for index, annotation in enumerate(annotations):
        annotation = annotation if isinstance(annotation, dict) else {}
        entry = f"{captions_json} annotation {annotation.get('id', f'[{index}]')}"
        caption = annotation.get("caption")
        if annotation.get("image_id") not in file_names:
            report.bad(entry, f"image_id {annotation.get('image_id')!r} is not listed under 'images'")
        elif not isinstance(caption, str) or not caption.strip():
            report.bad(entry, "missing or empty caption")
        else:
            captions[annotation["image_id"]].append(caption.strip())
    samples = []
    for image_id, file_name in file_names.items():
        entry = f"{captions_json} image {image_id} ({file_name})"
        path = os.path.abspath(os.path.join(image_dir, file_name))
        if not captions[image_id]:
            report.bad(entry, "has no caption")
        elif not os.path.isfile(path):
            report.bad(entry, f"image file {path} not found")
        else:
            sample = {"id": stem(file_name), "image": path, "captions": captions[image_id], "image_id": str(image_id)}
            samples.append({**sample, "lang": lang, SOURCE: entry})
    return samples


def convert_karpathy(karpathy_json, image_root, splits, report, lang=DEFAULT_LANG):
    """Return one sample per image of the chosen `splits` of a Karpathy split file."""
    images = json_list(load_json(karpathy_json), "images", karpathy_json)
    samples, other_splits = [], 0
    for index, image in enumerate(images):
        image = image if isinstance(image, dict) else {}
        if image.get("split") not in splits:
            other_splits += 1
            continue
        file_name = image.get("filename")
        entry = f"{karpathy_json} image {file_name or f'[{index}]'}"
        sentences = image.get("sentences")
        captions = [s.get("raw") for s in sentences if isinstance(s, dict)] if isinstance(sentences, list) else []
        if not isinstance(file_name, str) or not file_name:
            report.bad(entry, "missing 'filename'")
            continue
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            report.bad(entry, "needs 'sentences' with a non-empty 'raw' caption each")
            continue
        path = os.path.abspath(os.path.join(image_root, image.get("filepath", ""), file_name))
        if not os.path.isfile(path):
            report.bad(entry, f"image file {path} not found")
            continue
        image_id = str(image.get("cocoid", stem(file_name)))
        captions = [c.strip() for c in captions]
        sample = {"id": stem(file_name), "image": path, "captions": captions, "image_id": image_id, "lang": lang}
        samples.append({**sample, SOURCE: f"{karpathy_json} images[{index}] ({file_name})"})
    report.note(f"{other_splits} images of other splits than {' '.join(splits)} left out")
    return samples
