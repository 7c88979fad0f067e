"""Evaluate an OPT checkpoint or use it for inference.

    python eval.py --task retrieval --config CONFIG --ckpt CKPT [task options] [--set KEY=VALUE ...]
    python eval.py --task caption   --config CONFIG --ckpt CKPT [--image IMG_OR_DIR]
    python eval.py --task vqa       --config CONFIG --ckpt CKPT [--image IMG --question "图中有几个圆？"]
    python eval.py --task t2i       --ckpt CKPT --vq VQ_CKPT [--split test]
    python eval.py --task TASK ... --metrics_hook package.module:function [--metrics_hook ...]

`python eval.py --task TASK --help` lists the options of one task.

--metrics_hook adds metrics from outside src to a split evaluation of any task: the function, named by its import path
(module:function, importable from the working directory or PYTHONPATH), is called once with the evaluator's results
(src.evaluation.hooks.Evaluation: task, split, data, out_dir, its metrics and one record per evaluated item) and
returns a dict of extra metrics, written with the evaluator's own. The demo passes
`--metrics_hook demo.scene_reader:t2i_metrics` to read the shapes and colours of generated images back from the
pixels. Details: src/evaluation/hooks.py.
"""
import argparse
import importlib
import sys

from src.evaluation.hooks import load_hooks
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
    parser.add_argument("--metrics_hook", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="extra metrics from this function (repeatable; see above)")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.task is None:
        parser.print_help()
        return 0 if args.help else 2
    hooks = load_hooks(args.metrics_hook)
    module = importlib.import_module(TASKS[args.task])
    return module.main(rest + (["--help"] if args.help else []), metrics_hooks=hooks)


if __name__ == "__main__":
    sys.exit(run_main(main))
