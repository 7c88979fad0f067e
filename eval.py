"""Evaluate an OPT checkpoint or use it for inference.

    python eval.py --task retrieval --config CONFIG --ckpt CKPT [task options] [--set KEY=VALUE ...]
    python eval.py --task caption   --config CONFIG --ckpt CKPT [--image IMG_OR_DIR]
    python eval.py --task vqa       --config CONFIG --ckpt CKPT [--image IMG --question "图中有几个圆？"]

`python eval.py --task TASK --help` lists the options of one task.
"""
import argparse
import importlib
import sys

from src.utils.cli import run_main

TASKS = {
    "retrieval": "src.evaluation.retrieval",
    "caption": "src.evaluation.caption",
    "vqa": "src.evaluation.vqa",
    "t2i": "src.evaluation.t2i",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("--task", choices=sorted(TASKS), help="what to evaluate")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.task is None:
        parser.print_help()
        return 0 if args.help else 2
    module = importlib.import_module(TASKS[args.task])
    return module.main(rest + (["--help"] if args.help else []))


if __name__ == "__main__":
    sys.exit(run_main(main))
