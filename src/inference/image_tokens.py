"""Encode a manifest's images into VQ code grids for the image-decoding task and text-to-image; decode grids to PNG.

    python -m src.inference.image_tokens --vq RUN/checkpoints/step_X --manifest IN.jsonl --out OUT.jsonl
    python -m src.data.build_mindrecord --manifest OUT.jsonl --out OUT.mindrecord --vocab V.txt
    python -m src.inference.image_tokens --vq RUN/checkpoints/step_X --decode tokens/ID.npy --out ID.png

Every unique image (by image_id) is resized and centre-cropped to the tokenizer's vq.image_size and encoded once into
`tokens/<image_id>.npy` (int32 (h, w)) next to OUT; OUT is a copy of IN with `image_tokens` set on every line (paths
rewritten relative to OUT's folder), so build_mindrecord stores the codes as its `image_tokens` column. The image
decoder's tokens are these codes + 3 (src.data.masking.image_token_targets / codes_from_tokens).
"""
import argparse
import hashlib
import os
import re
import sys

import numpy as np
from src.utils.progress import progress

from src.utils.cli import run_main
from src.errors import UserError

TOKENS_DIR = "tokens"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def token_file_name(image_id):
    """`<image_id>.npy`, with characters unsafe in file names replaced and a hash added so names stay unique."""
    safe = _UNSAFE.sub("_", image_id)
    if safe != image_id or safe.startswith("."):
        safe = f"{safe}_{hashlib.sha1(image_id.encode('utf-8')).hexdigest()[:10]}"
    return f"{safe}.npy"


def extract_image_tokens(vq, manifest, out, batch_size=32, workers=2, rules=None):
    """Encode the unique images of `manifest` with `vq`; write the token files and the manifest `out`. `rules`: the
    image keywords of src.data.transforms.image_rules (the tokenizer run's data.background / resize / pad_color).

    Returns {"images": unique images encoded, "samples": manifest lines written, "grid": [h, w], "tokens_dir"}.
    """
    from src.data.image_dataset import ImageSource
    from src.data.manifest import read_manifest, write_manifest
    if os.path.abspath(out) == os.path.abspath(manifest):
        raise UserError(f"--out {out} would overwrite the input manifest; choose another file")
    samples = read_manifest(manifest, required=("image",))
    source = ImageSource(manifest, workers, rules)
    out_folder = os.path.dirname(os.path.abspath(out))
    tokens_dir = os.path.join(out_folder, TOKENS_DIR)
    os.makedirs(tokens_dir, exist_ok=True)
    token_path = {}
    batches = source.dataset(np.arange(len(source)), vq.image_size, batch_size)
    done = 0
    for batch in progress(batches.create_dict_iterator(num_epochs=1, output_numpy=True),
                      total=-(-len(source) // batch_size), desc="encode", unit="batch"):
        for codes in vq.encode(batch["image"]):
            image_id = source.ids[done]
            path = os.path.join(tokens_dir, token_file_name(image_id))
            np.save(path, codes.astype(np.int32))
            token_path[image_id] = path
            done += 1
    rewritten = []
    for sample in samples:
        sample = dict(sample)
        sample["image_tokens"] = os.path.relpath(token_path[sample["image_id"]], out_folder)
        for key in ("image", "audio"):
            if f"{key}_path" in sample:
                sample[key] = os.path.relpath(sample[f"{key}_path"], out_folder)
        rewritten.append(sample)
    write_manifest(out, rewritten)
    return {"images": done, "samples": len(rewritten), "grid": [vq.grid_size, vq.grid_size],
            "tokens_dir": tokens_dir}


def read_codes(path):
    """A code grid (h, w) from a .npy file of codes: (h, w), or flat (h*w,) for a square grid."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the token file ({err})") from None
    if codes.dtype.kind not in "iu" or codes.size == 0:
        raise UserError(f"{path}: expected a non-empty integer array of codes, got dtype {codes.dtype} shape "
                        f"{codes.shape}")
    if codes.ndim == 1:
        side = int(round(np.sqrt(codes.size)))
        if side * side != codes.size:
            raise UserError(f"{path}: {codes.size} codes do not form a square grid; save them as (h, w)")
        codes = codes.reshape(side, side)
    if codes.ndim != 2:
        raise UserError(f"{path}: expected codes (h, w), got shape {codes.shape}")
    return codes


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.inference.image_tokens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vq", required=True, metavar="CKPT", help="image tokenizer checkpoint (a step directory)")
    parser.add_argument("--vq_config", metavar="PATH", help="its config (default: the run's config.yaml)")
    parser.add_argument("--manifest", metavar="IN.jsonl", help="manifest whose images to encode")
    parser.add_argument("--decode", metavar="TOKENS.npy", help="decode this code grid to a PNG instead")
    parser.add_argument("--out", required=True, metavar="PATH", help="output manifest (encode) or PNG (--decode)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if bool(args.manifest) == bool(args.decode):
        raise UserError("give exactly one of --manifest (encode images) and --decode (write a PNG)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    import mindspore as ms
    from src.config import load_config
    from src.data.transforms import image_rules
    from src.inference.loading import load_vq, run_config_for
    from src.models.vq import decode_to_png
    ms.set_context(mode=ms.GRAPH_MODE)
    vq = load_vq(args.vq, args.vq_config)
    if args.decode:
        path = decode_to_png(vq, read_codes(args.decode), args.out)
        print(f"wrote {path}")
        return 0
    rules = image_rules(load_config(args.vq_config or run_config_for(args.vq)).data)  # load_vq checked the path
    report = extract_image_tokens(vq, args.manifest, args.out, args.batch_size, args.workers, rules)
    print(f"encoded {report['images']} images into {report['grid'][0]}x{report['grid'][1]} codes in "
          f"{report['tokens_dir']}; wrote {report['samples']} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
