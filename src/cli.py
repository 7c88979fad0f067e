"""What every command-line entry point shares: user errors become one line on stderr and exit code 2."""
import argparse
import sys

from src.errors import UserError


def run_main(main, argv=None):
    """Call `main(argv)`; a UserError is printed as `error: <message>` and gives exit code 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def not_built_yet(prog, capability):
    """For entry points whose capability has not landed: say so and fail, never pretend to run."""
    print(f"{prog}: {capability} is not built yet in this repository (see the README's Status section).",
          file=sys.stderr)
    return 2


def trainer_parser(doc):
    """The argument parser every trainer shares: --config and --set, help text from the module docstring."""
    from src.config import add_config_arguments
    summary, _, details = doc.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details or None,
                                     formatter_class=argparse.RawTextHelpFormatter)
    add_config_arguments(parser)
    return parser


def run_training(args, build):
    """Load the config of `args`, set up the process, `build(cfg, dist) -> (cfg, trainer)`, then train."""
    from src.config import config_from_args
    from src.engine.context import enable_compile_cache, setup_context
    cfg = config_from_args(args)
    dist = setup_context(cfg.run)
    cfg, trainer = build(cfg, dist)
    enable_compile_cache(cfg)
    trainer.run()
    return 0
