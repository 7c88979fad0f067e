"""Fine-tune OPT for image captioning.

    python train_caption.py --config config/caption/demo.yaml [--set checkpoint.init=PRETRAIN/checkpoints/step_X]
    python train_caption.py --config config/caption/demo.yaml --stage scst \
        --set checkpoint.init=XE_RUN/best/step_X run.output_dir=XE_RUN/scst

Stage xe (default): image (+ audio when the data has it and data.use_audio is on) -> text decoder, label-smoothed
cross-entropy (caption.label_smoothing, default 0.1). Stage scst: self-critical CIDEr-D optimisation from a
cross-entropy checkpoint: caption.scst_samples (default 5) captions sampled per image (caption.scst_top_k,
caption.scst_temperature), reward = CIDEr-D against the references, baseline = the greedy caption's CIDEr-D; the
learning rate is caption.scst_lr (default 1e-5, no warm-up). With data.val set, greedy-decoding CIDEr-D is measured
every train.eval_every steps and at the end, and the best weights are kept in run.output_dir/best/.
"""
import functools
import sys

from src.engine.launch import run_training, trainer_parser
from src.utils.cli import run_main

STAGES = ("xe", "scst")


def scst_config(cfg):
    """The config of the SCST stage: its own learning rate, no warm-up; needs checkpoint.init."""
    from src.errors import UserError
    if not cfg.checkpoint.init and not cfg.checkpoint.resume:
        raise UserError("--stage scst starts from a cross-entropy captioning checkpoint: add --set "
                        "checkpoint.init=<xe run>/best/step_XXXXXXXX")
    return cfg.with_updates({"optim.lr": float(cfg.caption.scst_lr), "optim.warmup_steps": 0})


def build_caption_training(cfg, dist, stage="xe"):
    """(cfg with the vocabulary size resolved, Trainer) for caption fine-tuning stage `stage`."""
    from src.data.finetune_data import (build_caption_dataset, build_scst_dataset, check_finetune_data,
                                        dataset_factory)
    from src.data.pretrain_data import read_references
    from src.data.tokenizer import Tokenizer
    from src.engine.mixing import TaskMixer
    from src.engine.trainer import Trainer
    from src.evaluation.caption import validation_evaluator
    from src.inference.text_generator import TextGenerator, decoding_settings
    from src.models.opt import build_model
    from src.tasks.caption import CaptionTask, SCSTTask

    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    if cfg.model.text.vocab_size <= 0:
        cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    if stage == "scst":
        cfg = scst_config(cfg)
    _, has_audio = check_finetune_data(cfg.data.train, cfg, "caption")
    model = build_model(cfg.model)
    batch = cfg.train.batch_size
    make = dataset_factory(build_caption_dataset if stage == "xe" else build_scst_dataset, cfg, tokenizer, dist)
    if stage == "xe":
        task = CaptionTask(model, has_audio, cfg.caption.label_smoothing)
    else:
        samples = int(cfg.caption.scst_samples)
        task = SCSTTask(model, has_audio, samples)
        sampling = {"top_k": cfg.caption.scst_top_k, "top_p": cfg.caption.scst_top_p,
                    "temperature": cfg.caption.scst_temperature,
                    "max_len": decoding_settings(cfg, "caption")["max_len"]}
        generator = TextGenerator(model, tokenizer, decoding_settings(cfg, "caption"))
        references = read_references(cfg.data.train)
        make = functools.partial(_scst_batches, make, generator, references, samples, sampling, cfg.run.seed)
    make(0, 0)  # fail now, not at the first step, if the data cannot feed the task
    evaluator = validation_evaluator(model, cfg, tokenizer, cfg.data.val) if cfg.data.val else None
    trainer = Trainer(cfg, dist, model, {"caption": task}, TaskMixer({"caption": 1.0}, cfg.run.seed),
                      {"caption": make}, batch * dist.world_size, evaluator)
    return cfg, trainer



def _scst_batches(make, generator, references, samples, sampling, seed, epoch, start_batch):
    from src.tasks.caption import SCSTBatches
    return SCSTBatches(make(epoch, start_batch), generator, references, samples, sampling, seed + epoch)


def main(argv=None):
    parser = trainer_parser(__doc__)
    parser.add_argument("--stage", choices=STAGES, default="xe", help="xe: cross-entropy (default); scst: CIDEr-D "
                                                                      "optimisation from an xe checkpoint")
    args = parser.parse_args(argv)
    return run_training(args, lambda cfg, dist: build_caption_training(cfg, dist, args.stage))


if __name__ == "__main__":
    sys.exit(run_main(main))
