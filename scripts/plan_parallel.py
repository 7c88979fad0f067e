"""Plan a data x tensor parallel split: memory per device of every dp x mp = DEVICES, and the fastest that fits.

    python scripts/plan_parallel.py --model config/model/opt_10b.yaml --devices 32 --device_memory_gb 64 \
        [--batch_size 1] [--grad_accumulation 1] [--seq TEXT IMAGE AUDIO] [--dtype fp16] [--optimizer adamw] \
        [--optimizer_shard] [--vocab_dp] [--device ascend|gpu|cpu] [--margin 0.1] [--set KEY=VALUE ...]

`--model` takes a model config or a run config (its `model:` section is planned; batch size, accumulation, dtype,
optimizer and parallel flags default to the config's values). `--device` picks the device terms of the memory model
(runtime, activation factor, logits, dropout masks, whether recompute frees memory; default ascend: the presets'
target, not run.device, whose default is CPU). 1 GB = 2^30 bytes. The formulas are in
docs/parallel.md. Exit code 0 with a recommendation, 1 when no split fits, 2 on a usage error.
"""
import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository's `src` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.config import load_config  # noqa: E402
from src.engine.parallel import (DEVICES, ELEMENT_BYTES, GB, OPTIMIZER_STATE_BYTES, dropout_setting,  # noqa: E402
                                 model_strategies, plan_candidates, recommend, split_parameter_counts, token_counts)
from src.errors import UserError  # noqa: E402
from src.models.summary import build_unallocated  # noqa: E402

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="scripts/plan_parallel.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, metavar="PATH", help="model or run config YAML")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set model.cross.layers=24")
    parser.add_argument("--devices", type=int, required=True, help="devices in the job (dp * mp)")
    parser.add_argument("--device_memory_gb", type=float, required=True, help="memory of one device in GB (2^30)")
    parser.add_argument("--batch_size", type=int, help="samples each device reads per step (default: train.batch_size)")
    parser.add_argument("--grad_accumulation", type=int, help="micro-batches per step (default: the config's)")
    parser.add_argument("--seq", type=int, nargs=3, metavar=("TEXT", "IMAGE", "AUDIO"),
                        help="tokens per modality, image with its global token; 0 = absent (default: the config's)")
    parser.add_argument("--dtype", choices=sorted(ELEMENT_BYTES),
                        help="compute dtype (default: model.compute_dtype)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZER_STATE_BYTES), help="default: optim.name")
    parser.add_argument("--optimizer_shard", action=argparse.BooleanOptionalAction,
                        help="shard optimizer states over dp (default: parallel.optimizer_shard, else off)")
    parser.add_argument("--vocab_dp", action=argparse.BooleanOptionalAction,
                        help="replicate vocabulary tables instead of splitting them by mp (default: "
                             "parallel.vocab_dp, else on)")
    parser.add_argument("--vocab_size", type=int, default=21128,
                        help="text vocabulary size when the config says model.text.vocab_size: 0")
    parser.add_argument("--device", choices=DEVICES, default="ascend",
                        help="device kind whose measured or assumed terms apply (default ascend; cpu adds the "
                             "runtime, activation factor, logit and dropout-mask terms measured on CPU, where "
                             "recompute frees nothing; see docs/parallel.md)")
    parser.add_argument("--margin", type=float, default=0.1, help="memory kept free, as a fraction (default 0.1)")
    return parser.parse_args(argv)


def settings(args, cfg):
    """Planner settings: command-line values, else the config's."""
    pick = {
        "batch_size": args.batch_size or cfg.train.batch_size,
        "grad_accumulation": args.grad_accumulation or cfg.train.grad_accumulation,
        "dtype": args.dtype or DTYPES[cfg.model.compute_dtype],
        "optimizer": args.optimizer or cfg.optim.name,
        "optimizer_shard": cfg.parallel.optimizer_shard if args.optimizer_shard is None
        else args.optimizer_shard,
        "vocab_dp": cfg.parallel.vocab_dp if args.vocab_dp is None else args.vocab_dp,
        "dropout": dropout_setting(cfg),
    }
    if args.devices < 1 or args.device_memory_gb <= 0 or not 0 <= args.margin < 1:
        raise UserError("--devices must be >= 1, --device_memory_gb > 0 and --margin in [0, 1)")
    if pick["optimizer"] not in OPTIMIZER_STATE_BYTES:
        raise UserError(f"optim.name={pick['optimizer']!r} is not known to the planner; pass --optimizer")
    if args.seq and (min(args.seq) < 0 or not any(args.seq)):
        raise UserError("--seq takes three token counts >= 0, not all 0")
    return pick


def format_table(candidates, limit):
    head = (f"{'dp':>4} {'mp':>4} {'params/dev':>11} {'runtime':>8} {'weights':>8} {'grads':>7} "
            f"{'optim':>7} {'act':>7} {'act(rc)':>8} {'total':>7} {'total(rc)':>9}  fits")
    lines = [head, "-" * len(head)]
    for c in candidates:
        m = c.memory
        if c.problems:
            fits = "invalid split"
        elif m.total(False) <= limit:
            fits = "yes"
        else:
            fits = "with recompute" if m.total(True) <= limit else "no"
        lines.append(f"{c.dp:>4} {c.mp:>4} {m.params / 1e6:>10.1f}M {m.runtime / GB:>8.2f} {m.weights / GB:>8.2f} "
                     f"{m.grads / GB:>7.2f} "
                     f"{m.optimizer / GB:>7.2f} {m.activations / GB:>7.2f} {m.activations_recompute / GB:>8.2f} "
                     f"{m.total(False) / GB:>7.2f} {m.total(True) / GB:>9.2f}  {fits}")
    return "\n".join(lines)


def report(cfg, args, pick, candidates, seq, sharded_total):
    """The whole printed plan and whether a split was recommended."""
    device_bytes = args.device_memory_gb * GB
    limit = device_bytes * (1 - args.margin)
    model = cfg.model
    lines = [
        f"model {model.name} ({args.model}) on {args.devices} {args.device} devices x {args.device_memory_gb:g} GB",
        f"parameters: {sharded_total[0] / 1e6:,.1f} M split by mp at mp > 1 + {sharded_total[1] / 1e6:,.1f} M "
        f"replicated; compute {pick['dtype']}{' + fp32 master' if pick['dtype'] != 'fp32' else ''}, "
        f"{pick['optimizer']}, optimizer_shard {'on' if pick['optimizer_shard'] else 'off'}, "
        f"vocab_dp {'on' if pick['vocab_dp'] else 'off'}",
        f"batch: {pick['batch_size']} per device, grad_accumulation {pick['grad_accumulation']} "
        f"(global {pick['batch_size'] * args.devices}); tokens: text {seq[0]}, image {seq[1]}, audio {seq[2]} "
        f"(cross-modal {sum(seq)})",
        "memory per device in GB; act = activations, rc = full recompute of every transformer block, "
        "runtime = framework and compiled graphs (device terms; act includes the device's logit and dropout-mask "
        "terms)",
        "",
        format_table(candidates, limit),
        "",
    ]
    for c in candidates:
        lines += [f"dp={c.dp} mp={c.mp}: {problem}" for problem in c.problems]
    lines.append(f"limit: {limit / GB:.2f} GB ({args.device_memory_gb:g} GB less {args.margin:.0%} margin)")
    best = recommend(candidates, device_bytes, args.margin)
    if best is None:
        lines.append("no split fits: lower --batch_size, raise --grad_accumulation, or turn on --optimizer_shard")
    else:
        c, recompute = best
        lines.append(f"recommended: parallel.mode={'semi_auto' if c.mp > 1 else 'data'} parallel.dp={c.dp} "
                     f"parallel.mp={c.mp} parallel.recompute={str(recompute).lower()} "
                     f"({c.memory.total(recompute) / GB:.2f} GB per device)")
    return "\n".join(lines), best is not None


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.model, args.overrides)
        pick = settings(args, cfg)
        seq = tuple(args.seq) if args.seq else token_counts(cfg.model)
        model = build_unallocated(cfg.model, vocab_size=args.vocab_size)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    candidates = plan_candidates(model, cfg.model, args.devices, pick["batch_size"], pick["grad_accumulation"], seq,
                                 pick["dtype"], pick["optimizer"], pick["optimizer_shard"], pick["vocab_dp"],
                                 args.device, pick["dropout"], args.vocab_size)
    # which parameters tensor parallelism splits does not depend on the split's size: count them at mp=2
    sharded_total = split_parameter_counts(model, model_strategies(model, 1, 2, pick["vocab_dp"]))
    text, found = report(cfg, args, pick, candidates, seq, sharded_total)
    print(text)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
