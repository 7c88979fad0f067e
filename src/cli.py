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


def docstring_parser(doc, prog=None):
    """An argument parser whose help is a module docstring: the first paragraph as description, the rest verbatim."""
    summary, _, details = doc.partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=details or None,
                                   formatter_class=argparse.RawTextHelpFormatter)


def trainer_parser(doc):
    """The argument parser every trainer shares: --config and --set, help text from the module docstring."""
    from src.config import add_config_arguments
    parser = docstring_parser(doc)
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
