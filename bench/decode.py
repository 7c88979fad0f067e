"""Caption decoding speed: captions/s of greedy and beam search, with and without the KV cache.

Random-initialised model of --config (default: the small model), a batch of random images encoded once, then
`generate` at a fixed length: EOS is forbidden until --max_len (min_len = max_len) so that every run decodes exactly
--max_len steps whatever the weights. One untimed warm-up run per setting compiles its graphs.
"""
import functools
import os
import time

import numpy as np

from bench import print_table
from src.config import load_config
from src.inference.generation import generate
from src.models.opt import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOS, EOS, PAD = 2, 3, 0


def add_arguments(parser):
    parser.add_argument("--config", default=os.path.join(ROOT, "config", "model", "small.yaml"))
    parser.add_argument("--vocab_size", type=int, default=1000, help="text vocabulary when the config says 0")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_len", type=int, default=30)
    parser.add_argument("--beam_size", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (default 2)")


def run(args):
    import mindspore as ms
    from src.tasks.caption import MemoryEncoder
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(args.config)
    model = build_model(cfg.model, vocab_size=args.vocab_size)
    model.set_train(False)
    image = cfg.model.image
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((args.batch_size, image.channels, image.image_size, image.image_size))
    memory, mask = MemoryEncoder(model, False, False)(ms.Tensor(pixels.astype(np.float32)))
    rows = []
    for strategy, beams in (("greedy", 1), ("beam", args.beam_size)):
        for cache in (True, False):
            decode = functools.partial(generate, model.text_decoder, memory, mask, BOS, EOS, PAD, args.max_len,
                                       strategy=strategy, beam_size=beams, min_len=args.max_len, use_cache=cache)
            decode()
            start = time.perf_counter()
            for _ in range(args.repeats):
                decode()
            seconds = (time.perf_counter() - start) / args.repeats
            rows.append({"strategy": strategy, "beam": beams, "kv_cache": "yes" if cache else "no",
                         "captions/s": args.batch_size / seconds, "s/batch": seconds})
    for row in rows:
        same = [r for r in rows if r["strategy"] == row["strategy"] and r["kv_cache"] == "no"]
        row["cache speed-up"] = row["captions/s"] / same[0]["captions/s"]
    print_table(f"decoding {args.batch_size} captions of {args.max_len} tokens ({os.path.basename(args.config)}, "
                "random weights, CPU)", rows, ["strategy", "beam", "kv_cache", "captions/s", "s/batch",
                                               "cache speed-up"], floatfmt=".2f")
    return {"config": args.config, "batch_size": args.batch_size, "max_len": args.max_len, "rows": rows}
