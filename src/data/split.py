"""Split one manifest into train / val / test manifests, keeping every image in one split.

    python -m src.data.split --manifest all.jsonl --out_dir data/mine --val 0.05 --test 1000 [--seed 0]

`--val` and `--test` are a fraction of the images (below 1) or a number of images (1 or more); train gets the rest.
Samples are grouped by `image_id` (which defaults to the sample id), so the captions of one image or the questions
about it never fall into two splits. A group goes to a split by a hash of (seed, image_id), not by its position in
the file: the same seed gives the same split whatever the order of the lines, and another seed another split.
Media paths are rewritten
relative to the output folder, so the new manifests point at the same files. Writes <out_dir>/{train,val,test}.jsonl
and <out_dir>/split_report.json (images and samples per split), and prints the same counts.
"""
import hashlib
import json
import os
import sys

from src.data.manifest import DERIVED_FIELDS, read_manifest, write_manifest
from src.errors import UserError
from src.utils.cli import docstring_parser, run_main
from src.utils.files import atomic_write_text

SPLITS = ("train", "val", "test")
MEDIA_FIELDS = ("image", "audio", "regions")


def split_size(value, groups, name):
    """Images of a split: `value` below 1 is a fraction of `groups` (rounded), 1 or more a count."""
    if value < 0:
        raise UserError(f"--{name} must be >= 0 (a fraction below 1 or a number of images), got {value}")
    if value >= 1 and value != int(value):
        raise UserError(f"--{name} {value}: a number of images must be whole; a fraction must be below 1")
    return int(round(value * groups)) if value < 1 else int(value)


def group_rank(seed, image_id):
    """The position of an image in the shuffled order: sha256 of (seed, image_id)."""
    return hashlib.sha256(f"{seed}\0{image_id}".encode()).hexdigest()


def assign_groups(image_ids, n_val, n_test, seed):
    """{image_id: split}: the images in hash order, the first `n_test` to test, the next `n_val` to val, the rest to
    train."""
    ordered = sorted(set(image_ids), key=lambda g: (group_rank(seed, g), g))
    if n_val + n_test > len(ordered):
        raise UserError(f"val {n_val} + test {n_test} images exceed the {len(ordered)} images of the manifest; "
                        f"ask for fewer")
    return {g: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, g in enumerate(ordered)}


def relocated(sample, out_dir):
    """`sample` as a manifest line written in `out_dir`: derived fields dropped, media paths relative to `out_dir`."""
    kept = {k: v for k, v in sample.items() if k not in DERIVED_FIELDS}
    for field in MEDIA_FIELDS:
        if f"{field}_path" in sample:
            kept[field] = os.path.relpath(sample[f"{field}_path"], out_dir)
    return kept


def split_manifest(manifest, out_dir, val, test, seed=0):
    """Write the three manifests and the report; returns the report."""
    samples = read_manifest(manifest)
    if not samples:
        raise UserError(f"{manifest} holds no sample")
    outputs = {name: os.path.abspath(os.path.join(out_dir, f"{name}.jsonl")) for name in SPLITS}
    if os.path.abspath(manifest) in outputs.values():
        raise UserError(f"{manifest} would be overwritten by its own split; choose another --out_dir")
    groups = [s["image_id"] for s in samples]
    n_groups = len(set(groups))
    assigned = assign_groups(groups, split_size(val, n_groups, "val"), split_size(test, n_groups, "test"), seed)
    os.makedirs(out_dir, exist_ok=True)
    report = {"manifest": os.path.abspath(manifest), "seed": seed, "splits": {}}
    for name in SPLITS:
        rows = [relocated(s, os.path.abspath(out_dir)) for s in samples if assigned[s["image_id"]] == name]
        write_manifest(outputs[name], rows)
        report["splits"][name] = {"manifest": outputs[name], "images": sum(1 for g in assigned.values() if g == name),
                                  "samples": len(rows)}
    atomic_write_text(os.path.join(out_dir, "split_report.json"), json.dumps(report, indent=2, ensure_ascii=False)
                      + "\n")
    return report


def main(argv=None):
    parser = docstring_parser(__doc__, "python -m src.data.split")
    parser.add_argument("--manifest", required=True, help="the manifest to split (JSONL, src/data/manifest.py)")
    parser.add_argument("--out_dir", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    parser.add_argument("--val", type=float, default=0.05, help="val images: fraction below 1 or count (0.05)")
    parser.add_argument("--test", type=float, default=0.05, help="test images: fraction below 1 or count (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="another seed gives another split (default 0)")
    args = parser.parse_args(argv)
    report = split_manifest(args.manifest, args.out_dir, args.val, args.test, args.seed)
    for name, part in report["splits"].items():
        print(f"{name}: {part['images']} images, {part['samples']} samples -> {part['manifest']}")
    print(f"report: {os.path.join(args.out_dir, 'split_report.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
