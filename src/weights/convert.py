"""Convert a released OPT checkpoint into this project's parameter names.

    python -m src.weights.convert --source zidongtaichu OPT_1-38_136.ckpt \
        --config config/model/opt_1b_released.yaml --out converted/opt_1b
    python -m src.weights.convert --source modelzoo opt_ascend_v190_cococaption_research_mm.ckpt \
        --config config/model/opt_modelzoo_caption.yaml --out converted/caption
    python -m src.weights.convert --source zidongtaichu ckpt_folder/ --strategy strategy.ckpt --config ... --out ...

--out becomes a checkpoint directory that `--set checkpoint.init=DIR` (and eval.py --checkpoint DIR) loads with no
missing or unexpected key, plus load_report.json / load_report.md (every key dropped, renamed, transposed, sliced,
remapped or filled, and why) and model_config.yaml. A checkpoint saved in model-parallel slices is given as the folder
holding rank_*/ with its --strategy file. See docs/released_checkpoints.md.

The work is done by src.weights.released_opt; this module is its command line.
"""
import sys


def main(argv=None):
    from src.utils.cli import docstring_parser
    from src.weights.released_opt import SOURCES, convert_file

    parser = docstring_parser(__doc__, prog="python -m src.weights.convert")
    parser.add_argument("checkpoint", metavar="IN.ckpt", help="the original checkpoint (or a folder of rank_*/ slices)")
    parser.add_argument("--source", required=True, choices=SOURCES, help="which released OPT the file is")
    parser.add_argument("--config", required=True, metavar="CONFIG.yaml", help="model (or run) config to convert to")
    parser.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    parser.add_argument("--strategy", default=None, metavar="STRATEGY.ckpt",
                        help="strategy file of a model-parallel run (IN is then the folder holding rank_*/)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.text_decoder.max_len=30")
    args = parser.parse_args(argv)
    report, notes = convert_file(args.checkpoint, args.config, args.source, args.out, args.strategy, args.overrides)
    print(report.summary())
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out} (load_report.md lists every key)")
    return 0


if __name__ == "__main__":
    from src.utils.cli import run_main
    sys.exit(run_main(main))
