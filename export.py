"""Export a trained OPT checkpoint for serving (MindIR graphs + a manifest).

    python export.py --task caption --ckpt_file RUN/best/step_X --file_name out/opt_caption [--file_format MINDIR]
    python export.py --task retrieval --ckpt_file CKPT --file_name out/opt_ret --batch_size 8    # static batch 8

Writes PREFIX_<graph>.mindir per graph (retrieval: text, image, [audio,] pair; caption / vqa: encoder,
[encoder_audio,] step), PREFIX_config.yaml, PREFIX_vocab.txt and the manifest PREFIX_export.json; run them with
`eval.py --task TASK --mindir PREFIX`. The batch is dynamic by default (--batch_size 0 or --dynamic_batch).
AIR needs an Ascend device; ONNX needs a static batch (--batch_size N) and ops MindSpore's ONNX exporter knows.
The config is the checkpoint's run config.yaml unless --config is given; --set overrides apply on top.
"""
import argparse
import os
import sys

from src.utils.cli import run_main
from src.inference.export_graphs import FORMATS, TASKS


def build_parser():
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS, help="which graphs to export")
    parser.add_argument("--ckpt_file", required=True, help="checkpoint step directory (e.g. RUN/best/step_00000300)")
    parser.add_argument("--file_name", required=True, metavar="PREFIX", help="output prefix (folder/name)")
    parser.add_argument("--file_format", default="MINDIR", choices=sorted(FORMATS), help="default MINDIR")
    parser.add_argument("--batch_size", type=int, default=0, help="static batch size; 0 (default) = dynamic")
    parser.add_argument("--dynamic_batch", action="store_true", help="dynamic batch (same as --batch_size 0)")
    parser.add_argument("--config", default=None, help="run config (default: the config.yaml of the checkpoint's run)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. --set data.use_audio=false")
    return parser


def main(argv=None):
    from src.engine.context import setup_context
    from src.errors import UserError
    from src.inference.export_graphs import check_request, export_model
    from src.inference.loading import load_trained_model, resolve_config

    args = build_parser().parse_args(argv)
    batch_size = 0 if args.dynamic_batch else args.batch_size
    if not os.path.exists(args.ckpt_file):
        raise UserError(f"--ckpt_file {args.ckpt_file} does not exist; give a checkpoint step directory such as "
                        "<run>/best/step_00000300")
    cfg = resolve_config(args.ckpt_file, args.config, args.overrides)
    setup_context(cfg)
    check_request(args.file_format, batch_size, args.file_name)
    model = load_trained_model(cfg, args.ckpt_file)
    manifest = export_model(cfg, model, args.task, args.file_name, args.file_format, batch_size, args.ckpt_file)
    print(f"{args.task} export ({args.file_format}, {'dynamic batch' if not batch_size else f'batch {batch_size}'}) "
          f"written; manifest {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
