"""What every training entry point shares: the --config/--set parser and the run (config, context, build, train)."""
from src.config import add_config_arguments, config_from_args
from src.utils.cli import docstring_parser


def trainer_parser(doc):
    """The argument parser every trainer shares: --config and --set, help text from the module docstring."""
    parser = docstring_parser(doc)
    add_config_arguments(parser)
    return parser


def run_training(args, build):
    """Load the config of `args`, set up the process, `build(cfg, dist) -> (cfg, trainer)`, then train."""
    from src.engine.context import enable_compile_cache, setup_context   # imports MindSpore: only when training
    cfg = config_from_args(args)
    dist = setup_context(cfg)
    cfg, trainer = build(cfg, dist)
    trainer.compile_cache = enable_compile_cache(cfg, trainer.graph_signature())
    trainer.run()
    return 0
