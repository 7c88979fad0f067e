"""Pre-train OPT on image-text(-audio) data.

    python train_pretrain.py --config config/pretrain/demo.yaml [--set train.steps=100 run.output_dir=outputs/x]

One task per step, drawn by the `pretrain.tasks` ratios; each task is its own graph computing only its own heads.
With `data.val` set, every task's loss on `pretrain.val_batches` batches of it is measured every `train.eval_every`
steps and at the end (src.evaluation.pretrain); `best/` keeps the model of the lowest mean validation loss.
Writes run.output_dir/{config.yaml, metrics.jsonl, checkpoints/, summary.json, summary.md}. Resume with
`--set checkpoint.resume=auto` (or a checkpoint directory). Under msrun or the rank-table launcher every rank reads
its own shard and gradients are averaged; rank 0 alone writes.
"""
import functools
import sys

from src.engine.launch import run_training, trainer_parser
from src.errors import UserError
from src.utils.cli import run_main


def build_pretraining(cfg, dist):
    """(cfg with the vocabulary size resolved, Trainer) for a pretraining config."""
    from src.data.pretrain_data import build_pretrain_dataset, open_mindrecord, unmet_needs, unmet_needs_message
    from src.data.tokenizer import Tokenizer
    from src.engine.mixing import TaskMixer
    from src.engine.trainer import Trainer
    from src.models.opt import build_model
    from src.tasks.pretrain import build_task

    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    if cfg.model.text.vocab_size <= 0:
        cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    info = open_mindrecord(cfg.data.train, cfg.data.vocab)
    has_audio = bool(info.meta["has_audio"]) and cfg.data.use_audio
    mixer = TaskMixer(dict(cfg.pretrain.tasks), cfg.run.seed)
    unmet = unmet_needs(info, cfg, mixer.tasks)
    if unmet:   # every task the data cannot feed, in one message, before anything is built
        raise UserError(unmet_needs_message(unmet))
    model = build_model(cfg.model)
    batch = cfg.train.batch_size
    datasets, tasks = {}, {}
    for name in mixer.tasks:
        make = functools.partial(_task_dataset, build_pretrain_dataset, cfg.data.train, name, cfg, tokenizer, batch,
                                 dist.rank, dist.world_size)
        make(0, 0)  # fail now, not at the task's first step, if the data cannot feed this task
        datasets[name] = make
        tasks[name] = build_task(name, model, cfg.pretrain, has_audio)
    evaluator = None
    if cfg.data.val and cfg.pretrain.val_batches > 0:
        from src.evaluation.pretrain import validation_evaluator
        val = open_mindrecord(cfg.data.val, cfg.data.vocab)
        if (bool(val.meta["has_audio"]) and cfg.data.use_audio) != has_audio:
            with_audio = "data.train" if has_audio else "data.val"
            raise UserError(f"{with_audio} has audio and the other does not (data.train {cfg.data.train}, data.val "
                            f"{cfg.data.val}); validate on data of the same modalities or set data.use_audio=false")
        evaluator = validation_evaluator(
            tasks, lambda name: build_pretrain_dataset(cfg.data.val, name, cfg, tokenizer, batch, 0, rank=dist.rank,
                                                       world=dist.world_size), cfg.pretrain.val_batches)
    return cfg, Trainer(cfg, dist, model, tasks, mixer, datasets, batch * dist.world_size, evaluator)


def _task_dataset(build, path, task, cfg, tokenizer, batch, rank, world, epoch, start_batch):
    return build(path, task, cfg, tokenizer, batch, epoch, rank=rank, world=world, start_batch=start_batch)


def main(argv=None):
    parser = trainer_parser(__doc__)
    args = parser.parse_args(argv)
    return run_training(args, build_pretraining)


if __name__ == "__main__":
    sys.exit(run_main(main))
