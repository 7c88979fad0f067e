"""Text-to-image generation and evaluation: `python eval.py --task t2i ...`.

    python eval.py --task t2i --ckpt RUN/checkpoints/step_X --vq VQRUN/checkpoints/step_Y \\
        --text "左边有一个红色的圆" --out out.png [--grid]
    python eval.py --task t2i --ckpt CKPT --vq VQ [--split test | --data FILE.mindrecord|FILE.jsonl] [--out_dir DIR]

With --text: the best of the sampled candidates (re-ranked by the model's text-image score) is written as a PNG at
the VQ decoder's resolution; with --grid, all candidates side by side, best first. The candidates' scores are printed.

Without --text: every record of the split (a MindRecord, or a manifest .jsonl with images and captions) gives one
prompt, its first caption. Reported (src/metrics/t2i.py):
  * psnr_db: mean PSNR of the split's (unique) images after VQ encoding and decoding - the VQ's ceiling on image
    quality (src.evaluation.image_tokenizer; with the codebook usage of those codes);
  * r_precision_r1 (r5, r10): for each prompt, does its text embedding rank the image generated for it first (in
    the top 5, 10) among that image and pool - 1 images generated for other prompts (contrastive towers; pool 100,
    or all prompts when fewer)? Chance is 100 k / pool (r_precision_chance_r1, ...). Computed for the re-ranked best
    candidate; for the first sampled candidate alone (*_first_sample: free of the re-ranking's advantage, which uses
    the same towers); and for the split's real images in place of generated ones (*_real_images: the ceiling the
    scorer allows).
  * code_nll / code_perplexity: how well the image decoder predicts the codes of each real image from its own
    prompt (teacher forcing; nats per code), and likelihood_r1 (r5, r10): for each real image, is its own prompt
    among the 1 (5, 10) prompts of its pool under which its codes are most likely? These read the decoder directly,
    without sampling or the towers;
  * with `eval.py --metrics_hook module:function` (src/evaluation/hooks.py), whatever the hook adds; it sees each
    prompt's real image and its candidates.
Files in <out_dir> (default <run>/eval): t2i_<split>.json / .md (metrics and examples), t2i_<split>_examples.png
(one row per example prompt: the real image, then the candidates best first) and t2i_<split>_examples/<k>.png (the
best image of example k, linked next to its prompt in the markdown).
"""
import os
import time

import numpy as np

from src.utils.cli import docstring_parser
from src.config import add_config_arguments
from src.errors import UserError
from src.utils.results import markdown_table
from src.metrics.t2i import POOL_SIZE, pool_others, r_precision, recall_at_ranks

EXAMPLES = 8


def read_split(path):
    """(ids, prompts = first captions, image sources = paths or encoded bytes) of a manifest or a MindRecord."""
    if path.endswith(".jsonl"):
        from src.data.manifest import read_manifest
        samples = read_manifest(path, required=("image", "captions"))
        return [s["id"] for s in samples], [s["captions"][0] for s in samples], [s["image_path"] for s in samples]
    import mindspore.dataset as ds
    from src.data.pretrain_data import open_mindrecord, read_references
    references = read_references(path)
    if any(not ref["captions"] for ref in references):
        raise UserError(f"{path}: some records have no caption; text-to-image evaluation needs one per record")
    images = [None] * len(references)
    reader = ds.MindDataset(list(open_mindrecord(path, None).files), columns_list=["index", "image"], shuffle=False)
    for row in reader.create_dict_iterator(num_epochs=1, output_numpy=True):
        images[int(row["index"])] = row["image"]
    return [r["id"] for r in references], [r["captions"][0] for r in references], images


def reference_images(sources, size, rules=None):
    """Images (paths or bytes) -> float32 (N, 3, size, size), the evaluation transform with the image `rules`
    (src.data.transforms.image_rules of the config)."""
    from src.data.transforms import load_image
    return np.stack([load_image(source, size, **(rules or {})) for source in sources])


def _rules(t2i):
    from src.data.transforms import image_rules
    return image_rules(t2i.cfg.data)


def real_image_features(t2i, sources):
    """Contrastive features (N, D) of the split's real images (the R-precision scorer's ceiling)."""
    from src.inference.retrieval import run_batched
    size, step, rules = t2i.image_size, t2i.batch_size, _rules(t2i)
    return np.concatenate([run_batched(t2i.image_tower, [reference_images(sources[i:i + step], size, rules)], step,
                                       "real images")[2] for i in range(0, len(sources), step)])


def split_codes(t2i, sources):
    """VQ codes (N, h, w) of the split's real images."""
    size, step, rules = t2i.vq.image_size, t2i.batch_size, _rules(t2i)
    return np.concatenate([t2i.vq.encode(reference_images(sources[i:i + step], size, rules))
                           for i in range(0, len(sources), step)])


def likelihood_metrics(t2i, prompts, sources, pool_size=POOL_SIZE):
    """What the image decoder makes of the split's real images, read by teacher forcing (no sampling, no towers):
    code_nll, the mean negative log-likelihood (nats) of an image's codes given its own prompt, per code, and
    code_perplexity = exp(code_nll); likelihood_r1 (r5, r10), the percentage of images whose own prompt is among the
    1 (5, 10) prompts under which their codes are most likely, of a pool of their own prompt and pool_size - 1 others
    (the pools of R-precision; ties count against the own prompt)."""
    from src.utils.progress import progress
    codes = split_codes(t2i, sources)
    memory, memory_mask = t2i.memory(*t2i.encode_texts(prompts))
    n = len(prompts)
    own = t2i.code_log_likelihood(codes, memory, memory_mask)   # log p(codes of image i | prompt i)
    ranks = []
    for i, others in enumerate(progress(pool_others(n, pool_size), desc="t2i likelihood pools",
                                    leave=False)):
        rivals = t2i.code_log_likelihood(np.repeat(codes[i:i + 1], len(others), 0), memory[others],
                                         memory_mask[others], batch_size=len(others))
        ranks.append(1 + int((rivals >= own[i]).sum()))
    nll = float(-np.mean(own) / t2i.n_codes)
    ranked = recall_at_ranks(ranks, min(int(pool_size), n))
    return {"code_nll": nll, "code_perplexity": float(np.exp(nll)),
            **{f"likelihood_{k}": v for k, v in ranked.items() if k.startswith("r")}}


def first_index(result):
    """Position (in best-first order) of the candidate sampled first, before re-ranking."""
    return int(np.flatnonzero(result.order == 0)[0])


def first_sampled(result):
    """The contrastive features of the candidate sampled first (before re-ranking)."""
    return result.image_features[first_index(result)]


def hook_records(results, ids, prompts, sources, size, rules=None):
    """One record per prompt for metrics hooks: id, prompt, image (the real image, uint8 (size, size, 3)),
    candidates (uint8 (C, size, size, 3), best first) and first_sample (index of the first sampled candidate)."""
    from src.data.transforms import to_uint8
    real = to_uint8(reference_images(sources, size, rules))
    return [{"id": i, "prompt": p, "image": image, "candidates": r.images, "first_sample": first_index(r)}
            for i, p, image, r in zip(ids, prompts, real, results)]


def evaluate(t2i, data_path, out_dir, split, pool_size=POOL_SIZE, limit=0, examples=EXAMPLES, metrics_hooks=()):
    """Generate for every prompt of `data_path`, compute the metrics (plus those of `metrics_hooks`,
    src.evaluation.hooks), write the report; returns the results."""
    from src.data.image_dataset import ImageSource
    from src.data.transforms import image_rules, to_uint8, write_png
    from src.evaluation.caption import write_report
    from src.evaluation.hooks import Evaluation, run_hooks
    from src.evaluation.image_tokenizer import evaluate_reconstruction
    start = time.time()
    ids, prompts, sources = read_split(data_path)
    if limit:
        ids, prompts, sources = ids[:limit], prompts[:limit], sources[:limit]
    if len(prompts) < 2:
        raise UserError(f"{data_path}: R-precision needs at least 2 prompts, found {len(prompts)}")
    source = ImageSource(data_path, t2i.cfg.data.workers, image_rules(t2i.cfg.data))
    reconstruction, _ = evaluate_reconstruction(t2i.vq, source, t2i.vq.image_size, t2i.batch_size)
    results = t2i.generate(prompts)
    texts = np.stack([r.text_features for r in results])
    pools = {"": np.stack([r.image_features[0] for r in results]),
             "_first_sample": np.stack([first_sampled(r) for r in results]),
             "_real_images": real_image_features(t2i, sources)}
    metrics = {"split": split, "data": data_path, "n_prompts": len(prompts), "candidates": t2i.settings["candidates"]}
    for suffix, images in pools.items():
        rp = r_precision(texts @ images.T, pool_size)
        metrics.update({f"r_precision_{k}{suffix}": v for k, v in rp.items() if k.startswith("r")})
        metrics.update({f"r_precision_{k}": v for k, v in rp.items() if k.startswith("chance")})
        metrics["r_precision_pool"] = rp["pool_size"]
    metrics.update(likelihood_metrics(t2i, prompts, sources, pool_size))
    metrics.update({"psnr_db": reconstruction["psnr"], "codebook_used_fraction": reconstruction["used_fraction"],
                    "codebook_perplexity": reconstruction["perplexity"],
                    "filled_cells": int(sum(r.filled.sum() for r in results)),
                    "settings": dict(t2i.settings)})
    if metrics_hooks:
        records = hook_records(results, ids, prompts, sources, t2i.vq.image_size, _rules(t2i))
        metrics.update(run_hooks(metrics_hooks, Evaluation("t2i", split, data_path, out_dir, dict(metrics), records)))
    metrics["seconds"] = round(time.time() - start, 1)
    name = f"t2i_{split}"
    shown = list(range(min(examples, len(prompts))))
    real = to_uint8(reference_images([sources[k] for k in shown], t2i.vq.image_size, _rules(t2i))) if shown else []
    rows = []
    for k in shown:
        file = f"{name}_examples/{k:02d}.png"
        write_png(results[k].best, os.path.join(out_dir, file))
        rows.append({"id": ids[k], "prompt": prompts[k], "image": f"![{k}]({file})", "file": file,
                     "score": float(results[k].scores[0])})
    if shown:
        write_png(np.stack([image for j, k in enumerate(shown) for image in [real[j], *results[k].images]]),
                  os.path.join(out_dir, f"{name}_examples.png"), columns=1 + len(results[0].images))
    write_report(out_dir, name, f"Text-to-image on {split} ({data_path})", metrics, rows,
                 ["id", "prompt", "image", "score"])
    return metrics


def main(argv=None, metrics_hooks=()):
    parser = docstring_parser(__doc__, "eval.py --task t2i")
    parser.add_argument("--ckpt", required=True, help="OPT checkpoint step directory")
    parser.add_argument("--vq", required=True, help="VQ image tokenizer checkpoint step directory")
    parser.add_argument("--vq_config", default=None, help="the VQ run's config.yaml (default: found next to --vq)")
    add_config_arguments(parser, default_config="")  # empty: the config.yaml of the checkpoint's run
    parser.add_argument("--text", default=None, help="generate an image for this prompt")
    parser.add_argument("--out", default=None, help="with --text: the PNG to write (default <out_dir>/t2i.png)")
    parser.add_argument("--grid", action="store_true", help="with --text: write every candidate, best first")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="evaluate data.<split> (default test)")
    parser.add_argument("--data", default=None, help="evaluate this MindRecord or manifest (.jsonl) instead")
    parser.add_argument("--out_dir", default=None, help="where results go (default: <run.output_dir>/eval)")
    parser.add_argument("--candidates", type=int, default=None, help="images sampled per prompt (t2i.candidates)")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rerank", choices=["itc", "itm"], default=None)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale (t2i.guidance; 1 = off)")
    parser.add_argument("--pool", type=int, default=POOL_SIZE, help="R-precision pool size (default 100)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N records (0 = all)")
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="example prompts in the report")
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    from src.data.transforms import write_png
    from src.engine.context import setup_context
    from src.inference.t2i import TextToImage
    settings = {k: getattr(args, k) for k in ("candidates", "top_k", "top_p", "temperature", "seed", "rerank",
                                              "guidance")}
    t2i = TextToImage.from_checkpoints(args.ckpt, args.vq, args.config or None, args.vq_config, args.overrides,
                                       args.batch_size, **settings)
    setup_context(t2i.cfg)
    out_dir = args.out_dir or os.path.join(t2i.cfg.run.output_dir, "eval")
    if args.text is not None:
        if not args.text.strip():
            raise UserError("--text is empty; give a prompt such as \"左边有一个红色的圆\"")
        result = t2i.generate(args.text)
        out = args.out or os.path.join(out_dir, "t2i.png")
        write_png(result.images if args.grid else result.best, out)
        print(f"{out}\t" + " ".join(f"{s:.4f}" for s in result.scores))
        return 0
    if args.data is None:
        from src.evaluation.caption import split_path
        args.data = split_path(t2i.cfg, args.split)
    metrics = evaluate(t2i, args.data, out_dir, args.split, args.pool, args.limit, args.examples, metrics_hooks)
    print(markdown_table([{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))],
                         ["metric", "value"], floatfmt=".2f"))
    print(f"results written to {out_dir}/t2i_{args.split}.json and .md")
    return 0
