"""Fine-tune OPT for cross-modal retrieval.

    python train_retrieval.py --config config/retrieval/demo.yaml [--set train.steps=100 checkpoint.init=CKPT]

Starts from `checkpoint.init` (a pre-training checkpoint) and trains the ranking objective (cross-encoder score of
each positive against hard and random in-batch negatives, margin 0.2, both directions) plus the towers' contrastive
loss; see src/tasks/retrieval.py. Every `train.eval_every` steps (and at the end) the itc recalls on `data.val` are
computed and the best weights kept in run.output_dir/best/ (score = mean of IR and TR R@1/5/10). Settings
retrieval.margin (0.2), retrieval.itc_weight (1.0), retrieval.hard_negatives (true) and retrieval.batch_size (32,
evaluation) are read from the config when present. Resume with `--set checkpoint.resume=auto`.
"""
import sys

from src.engine.launch import run_training, trainer_parser
from src.utils.cli import run_main

TASK = "retrieval"


def build_retrieval_training(cfg, dist):
    """(cfg with the vocabulary size resolved, Trainer) for a retrieval fine-tuning config."""
    from src.data.pretrain_data import build_pretrain_dataset
    from src.data.tokenizer import Tokenizer
    from src.engine.mixing import TaskMixer
    from src.engine.trainer import Trainer
    from src.errors import UserError
    from src.evaluation.retrieval import RetrievalEvaluator
    from src.models.opt import build_model
    from src.tasks.retrieval import RetrievalTask

    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    if cfg.model.text.vocab_size <= 0:
        cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    batch = cfg.train.batch_size
    if batch < 2:
        raise UserError(f"retrieval fine-tuning draws negatives from the batch: train.batch_size must be >= 2, "
                        f"got {batch}")
    data_cfg = cfg.with_updates({"data.use_audio": False})  # the objective is text-image only

    def make_dataset(epoch, start_batch):
        return build_pretrain_dataset(cfg.data.train, "itc", data_cfg, tokenizer, batch, epoch, rank=dist.rank,
                                      world=dist.world_size, start_batch=start_batch)

    make_dataset(0, 0)  # fail now if the data cannot feed the task
    model = build_model(cfg.model)
    task = RetrievalTask(model, cfg.retrieval.margin, cfg.retrieval.itc_weight,
                         cfg.retrieval.hard_negatives)
    evaluator = None
    if cfg.data.val:
        evaluator = RetrievalEvaluator(model, cfg, tokenizer, cfg.data.val, cfg.retrieval.batch_size,
                                       dist.rank, dist.world_size)
    trainer = Trainer(cfg, dist, model, {TASK: task}, TaskMixer({TASK: 1.0}, cfg.run.seed), {TASK: make_dataset},
                      batch * dist.world_size, evaluator)
    return cfg, trainer


def main(argv=None):
    parser = trainer_parser(__doc__)
    args = parser.parse_args(argv)
    return run_training(args, build_retrieval_training)


if __name__ == "__main__":
    sys.exit(run_main(main))
