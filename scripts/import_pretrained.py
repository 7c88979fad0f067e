"""Build the model of a config, load the public pre-trained encoders it names (checkpoint.init_text / init_image /
init_towers) and save the result as an OPT checkpoint, e.g. to evaluate Chinese-CLIP's towers zero-shot:

    python scripts/import_pretrained.py --config config/retrieval/cnclip_zeroshot.yaml
    python eval.py --task retrieval --ckpt outputs/cnclip/zeroshot/checkpoints/step_00000000 --mode itc

Writes <run.output_dir>/config.yaml (resolved, vocabulary size filled in), checkpoints/step_00000000/ (model weights
only) and load_report.{json,md} (every key mapped, reshaped, interpolated, dropped; every parameter left at its
initialisation). See docs/pretrained_encoders.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.engine.launch import trainer_parser  # noqa: E402
from src.utils.cli import run_main  # noqa: E402
from src.errors import UserError  # noqa: E402


def main(argv=None):
    from src.config import config_from_args, save_config
    from src.data.vocab import read_vocab
    from src.engine.context import setup_context
    from src.models.opt import build_model
    from src.weights.checkpoint import CheckpointManager
    from src.weights.pretrained import init_from_pretrained

    args = trainer_parser(__doc__).parse_args(argv)
    cfg = config_from_args(args)
    if cfg.model.text.vocab_size <= 0:
        cfg = cfg.with_updates({"model.text.vocab_size": len(read_vocab(cfg.data.vocab))})
    setup_context(cfg)
    model = build_model(cfg.model)
    report = init_from_pretrained(model, cfg)
    if report is None:
        raise UserError(f"{args.config} names no pre-trained weights: set checkpoint.init_text, init_image or "
                        f"init_towers")
    out = cfg.run.output_dir
    save_config(cfg, out)
    tensors = {p.name: p for p in model.get_parameters()}
    path = CheckpointManager(os.path.join(out, "checkpoints"), keep_last=None, fmt=cfg.checkpoint.format).save(
        0, tensors, {"imported_from": report.source})
    report_path, _ = report.write(out)
    print(f"{report.summary()}\ncheckpoint: {path}\nload report: {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
