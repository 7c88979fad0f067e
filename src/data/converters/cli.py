"""`python -m src.data.converters FORMAT --out OUT.jsonl [format arguments]`: convert a dataset to a manifest.

Bad entries stop the conversion with an error naming them, unless --skip_bad: then they are skipped, counted, and
listed in `OUT.jsonl.skipped.tsv` (entry<TAB>reason).
"""

import argparse
import os
import sys

from src.data.converters import cn_captions, coco, fmiqa, ofa_tsv, opt_textdb, vqa2
from src.data.converters.common import SOURCE, Report
from src.data.manifest import LANGS, captions_of, write_manifest
from src.errors import UserError

FORMATS = {
    "coco": coco,
    "cn-captions": cn_captions,
    "opt-textdb": opt_textdb,
    "fmiqa": fmiqa,
    "vqa2": vqa2,
    "ofa-tsv": ofa_tsv,
}
SHOWN_SKIPPED = 10


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m src.data.converters", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, module in FORMATS.items():
        sub = formats.add_parser(
            name,
            help=module.__doc__.splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--out", required=True, help="manifest JSONL to write")
        sub.add_argument("--skip_bad", action="store_true", help="skip, count and list bad entries instead of failing")
        sub.add_argument("--lang", choices=LANGS, default=module.DEFAULT_LANG, help="language of the text")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _without_repeated_ids(samples, report):
    """Drop (as bad entries) samples whose id an earlier sample already has, naming both input entries."""
    kept, source_of_id = [], {}
    for sample in samples:
        source = sample.get(SOURCE, "a sample")
        if sample["id"] in source_of_id:
            report.bad(f"{source}: id {sample['id']!r}",
                       f"also the id of the sample from {source_of_id[sample['id']]}; ids must be unique")
        else:
            source_of_id[sample["id"]] = source
            kept.append(sample)
    return kept


def _relative_to(folder, sample):
    """Return `sample` with its absolute image/audio paths made relative to `folder` (the manifest's)."""
    sample = {key: value for key, value in sample.items() if key != SOURCE}
    for key in ("image", "audio"):
        if key in sample:
            sample[key] = os.path.relpath(sample[key], folder).replace(os.sep, "/")
    return sample


def _write_skipped(path, report):
    """Write the skipped entries to `path`, or remove a stale list when nothing was skipped."""
    if report.skipped:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{entry}\t{reason}\n" for entry, reason in report.skipped)
    elif os.path.exists(path):
        os.remove(path)


def summary(samples):
    """One line of counts for a list of samples."""
    images = len({sample["image"] for sample in samples if "image" in sample})
    captions = sum(len(captions_of(sample)) for sample in samples)
    questions = sum("question" in sample for sample in samples)
    return f"{len(samples)} samples ({images} images, {captions} captions, {questions} questions)"


def main(argv=None):
    args = build_parser().parse_args(argv)
    report = Report(skip_bad=args.skip_bad)
    skipped_path = f"{args.out}.skipped.tsv"
    try:
        samples = _without_repeated_ids(args.run(args, report), report)
        if not samples:
            raise UserError(f"no samples converted ({len(report.skipped)} bad entries); check the input paths")
        folder = os.path.dirname(os.path.abspath(args.out))
        write_manifest(args.out, [_relative_to(folder, sample) for sample in samples])
        _write_skipped(skipped_path, report)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.format}: wrote {summary(samples)} to {args.out}")
    for note in report.notes:
        print(f"  {note}")
    if report.skipped:
        print(f"  skipped {len(report.skipped)} bad entries, all listed in {skipped_path}:")
        for entry, reason in report.skipped[:SHOWN_SKIPPED]:
            print(f"    {entry}: {reason}")
    return 0
