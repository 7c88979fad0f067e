"""Parameter count per component for any model or run config.

    python -m src.models.summary config/model/opt_1b.yaml [--set model.cross.layers=24] [--vocab_size 21128]

Parameters are counted from their shapes without being allocated, so even the 10B config takes a second.
"""
import argparse
import sys
import warnings

from src.config import add_config_arguments, config_from_args
from src.errors import UserError


def count_parameters(model):
    """{top-level component: parameter count} plus "total", in the model's attribute order."""
    counts = {}
    for name, cell in model.name_cells().items():
        counts[name] = sum(p.size for p in cell.get_parameters())
    counts["total"] = sum(p.size for p in model.get_parameters())
    return counts


def build_unallocated(model_cfg, vocab_size=None):
    """Build the model with parameter initialisation skipped (shapes only)."""
    import mindspore as ms
    from mindspore.nn.utils import no_init_parameters

    from .opt import build_model
    ms.set_device("CPU")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with no_init_parameters():
            return build_model(model_cfg, vocab_size=vocab_size)


def format_counts(counts, title):
    width = max(len(k) for k in counts)
    lines = [title, f"{'component'.ljust(width)}  {'parameters':>15}  {'millions':>9}"]
    for name, n in counts.items():
        if name == "total":
            lines.append("-" * (width + 28))
        lines.append(f"{name.ljust(width)}  {n:>15,d}  {n / 1e6:>9.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config_path", nargs="?", help="model or run config (same as --config)")
    add_config_arguments(parser, default_config="")
    parser.add_argument("--vocab_size", type=int, default=21128,
                        help="text vocabulary size used when the config says model.text.vocab_size: 0")
    args = parser.parse_args(argv)
    args.config = args.config or args.config_path
    try:
        if not args.config:
            raise UserError("give a config file, e.g. python -m src.models.summary config/model/opt_1b.yaml")
        cfg = config_from_args(args)
        model = build_unallocated(cfg.model, vocab_size=args.vocab_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_counts(count_parameters(model), f"model {cfg.model.name} ({args.config})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
