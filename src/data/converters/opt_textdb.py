"""The original OPT text-db layout: --txt_db folder with meta.json and one `<id>.json` ({"input_ids": [...]}) per id.

Token ids (without [CLS]/[SEP]) are decoded to text with --vocab (the vocabulary the db was made with, normally
bert-base-chinese). The ids come from the --ids JSON list. An id `<name>.jpg<k>` is caption k of image `<name>.jpg`;
other ids name their image directly: cc3m / cc12m ids (which have their own file naming) as they are, the rest with
`.jpg` appended when missing. Images are looked up as `--image_dir/<name>`, then (not for cc3m / cc12m)
`--image_dir/<basename>`, as the original loader did. Token ids are decoded with [UNK] kept visible. Ids containing
`laion400m` lose their first 3 token ids, also as in the original. One sample per image with its captions in caption
order.
"""

import json
import os
import re

from src.utils.progress import progress

from src.data.converters.common import SOURCE, first_file, load_json, stem
from src.data.tokenizer import Tokenizer
from src.errors import UserError

DEFAULT_LANG = "zh"
CAPTION_ID = re.compile(r"^(?P<image>.*\.jpg)(?P<k>\d+)$")
LAION_PREFIX_IDS = 3
OWN_FILE_NAMES = ("cc3m", "cc12m")


def add_arguments(parser):
    parser.add_argument("--txt_db", required=True, help="text db folder (meta.json and <id>.json files)")
    parser.add_argument("--ids", required=True, help="JSON list of ids to convert")
    parser.add_argument("--image_dir", required=True, help="image folder")
    parser.add_argument("--vocab", required=True, help="vocabulary file of the token ids (bert-base-chinese)")


def run(args, report):
    return convert_opt_textdb(args.txt_db, args.ids, args.image_dir, args.vocab, report, args.lang)


def image_of(text_id):
    """Return (image name, caption index or None) of an OPT id: the original loader's rule (`ImgData.get_image`)."""
    match = CAPTION_ID.match(text_id)
    if match:
        return match["image"], int(match["k"])
    if text_id.endswith(".jpg") or own_file_name(text_id):
        return text_id, None
    return text_id + ".jpg", None


def own_file_name(text_id):
    """cc3m / cc12m ids are their image's relative path as it is, with no `.jpg` added and no basename fallback."""
    return ".jpg" not in text_id and any(corpus in text_id for corpus in OWN_FILE_NAMES)


def _check_meta(txt_db, tokenizer, vocab_path):
    """The ids of [CLS] and [SEP] in meta.json must be those of the vocabulary."""
    meta_path = os.path.join(txt_db, "meta.json")
    meta = load_json(meta_path)
    for key, token_id in (("CLS", tokenizer.cls_id), ("SEP", tokenizer.sep_id)):
        if key in meta and meta[key] != token_id:
            raise UserError(
                f"{meta_path}: {key} is {meta[key]} but {vocab_path} has [{key}] at {token_id}; "
                "pass the vocabulary the text db was made with"
            )


def _read_token_ids(txt_db, text_id, vocab_size):
    """Return the token ids of `text_id`, or raise ValueError with the reason."""
    file_name = f"{text_id}.json"
    candidates = [os.path.join(txt_db, file_name), os.path.join(f"{txt_db.rstrip('/')}_json", file_name)]
    path = first_file(candidates)
    if path is None:
        raise ValueError(f"text file {candidates[0]} not found")
    try:
        with open(path, encoding="utf-8") as f:
            token_ids = json.load(f).get("input_ids")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{path} is not a JSON object") from err
    if not isinstance(token_ids, list) or not all(isinstance(i, int) and 0 <= i < vocab_size for i in token_ids):
        raise ValueError(f"{path}: 'input_ids' must be a list of token ids below {vocab_size}")
    return token_ids[LAION_PREFIX_IDS:] if "laion400m" in text_id else token_ids


def convert_opt_textdb(txt_db, ids_json, image_dir, vocab_path, report, lang=DEFAULT_LANG):
    """Return one sample per image of an OPT text db, captions decoded to text."""
    tokenizer = Tokenizer(vocab_path)
    _check_meta(txt_db, tokenizer, vocab_path)
    text_ids = load_json(ids_json)
    if not isinstance(text_ids, list):
        raise UserError(f"{ids_json}: expected a JSON list of ids")
    captions, seen = {}, set()
    for index, text_id in enumerate(progress(text_ids, desc="decoding texts", unit="text")):
        entry = f"{ids_json} id {text_id!r}" if isinstance(text_id, str) else f"{ids_json} [{index}]"
        if not isinstance(text_id, str) or not text_id:
            report.bad(entry, "ids must be non-empty strings")
            continue
        if text_id in seen:
            report.bad(entry, "listed twice")
            continue
        seen.add(text_id)
        try:
            caption = tokenizer.decode(_read_token_ids(txt_db, text_id, tokenizer.vocab_size))
        except ValueError as err:
            report.bad(entry, str(err))
            continue
        if not caption.strip():
            report.bad(entry, "decodes to empty text")
            continue
        name, k = image_of(text_id)
        captions.setdefault(name, []).append((k if k is not None else -1, caption))
    samples = []
    for name, numbered in captions.items():
        candidates = [os.path.join(image_dir, name)]
        if not own_file_name(name):
            candidates.append(os.path.join(image_dir, os.path.basename(name)))
        path = first_file(candidates)
        if path is None:
            report.bad(f"{ids_json} image {name}", f"image file not found in {image_dir}")
            continue
        ordered = [caption for _, caption in sorted(numbered, key=lambda pair: pair[0])]
        sample = {"id": stem(name), "image": os.path.abspath(path), "captions": ordered, "lang": lang}
        samples.append({**sample, SOURCE: f"{ids_json} image {name}"})
    return samples
