"""Helpers shared by the converters: the bad-entry report, JSON loading, image lookup and base64 images."""

import base64
import binascii
import io
import json
import os
import re

from PIL import Image, UnidentifiedImageError

from src.errors import UserError

_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
SOURCE = "_source"  # key of a converted sample: the input entry it comes from (file and line), not written out
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


class Report:
    """Bad entries and notes of one conversion.

    A bad entry is an error unless `skip_bad` is set; then it is skipped, counted and listed.
    """

    def __init__(self, skip_bad=False):
        self.skip_bad = skip_bad
        self.skipped = []
        self.notes = []

    def bad(self, entry, reason):
        """Reject `entry` (a name the user can find in the input) for `reason`."""
        if not self.skip_bad:
            raise UserError(f"{entry}: {reason}; fix the entry, or pass --skip_bad to skip and list bad entries")
        self.skipped.append((entry, reason))

    def note(self, message):
        """Record something the user should know about the input (shown after the counts)."""
        self.notes.append(message)


def load_json(path):
    """Load a JSON file; a missing or malformed file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path} not found")
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: not a valid UTF-8 JSON file ({err})") from err


def json_list(data, key, path):
    """Return `data[key]`, which must be a list (`path` names the file in the error)."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise UserError(f"{path}: expected a list under the key {key!r}; is this the right file?")
    return value


def first_file(paths):
    """Return the first of `paths` that is an existing file, or None."""
    return next((path for path in paths if os.path.isfile(path)), None)


def stem(file_name):
    """`a/b/COCO_1.jpg` -> `a/b/COCO_1`."""
    return os.path.splitext(file_name)[0]


def with_suffix(name, suffix):
    """Append `suffix` to `name` unless the name already has a file extension."""
    return name if os.path.splitext(name)[1] else name + suffix


def decode_base64_image(data):
    """Decode a base64 image; return (its bytes, the file suffix of its format).

    Both the standard and the URL-safe alphabet are accepted (OFA and Chinese-CLIP write URL-safe base64).
    Raises ValueError with a short reason if the string is not base64 or not a readable image.
    """
    try:
        raw = base64.b64decode(data.strip().translate(_URLSAFE_TO_STANDARD), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"image is not valid base64 ({err})") from err
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image_format = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"image bytes do not decode ({err})") from err
    return raw, IMAGE_SUFFIXES.get(image_format, f".{image_format.lower()}")


def write_image_bytes(raw, suffix, folder, name):
    """Write image bytes unchanged to `folder/<name><suffix>` (unsafe characters of `name` become `_`)."""
    path = os.path.join(folder, re.sub(r"[^\w.-]", "_", name) + suffix)
    os.makedirs(folder, exist_ok=True)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def save_base64_image(data, folder, name):
    """Decode a base64 image and write its bytes unchanged to `folder/<name>.<format suffix>`; return the path.

    Raises ValueError with a short reason if the string is not base64 or not a readable image.
    """
    raw, suffix = decode_base64_image(data)
    return write_image_bytes(raw, suffix, folder, name)
