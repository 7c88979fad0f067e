"""Fine-tune OPT for visual question answering (generative answers).

    python train_vqa.py --config config/vqa/demo.yaml [--set checkpoint.init=PRETRAIN/checkpoints/step_X]

The question goes into the text slot of the cross-modal encoder with the image (and audio when the data has it);
the text decoder generates the answer, trained with label-smoothed cross-entropy (vqa.label_smoothing, default 0.1)
on one of the question's answers per epoch. With data.val set, answer accuracy (greedy decoding, or the closed
answer list when vqa.closed_vocab is on) is measured every train.eval_every steps and at the end; the best weights
are kept in run.output_dir/best/.
"""
import sys

from src.engine.launch import run_training, trainer_parser
from src.utils.cli import run_main


def build_vqa_training(cfg, dist):
    """(cfg with the vocabulary size resolved, Trainer) for VQA fine-tuning."""
    from src.data.finetune_data import build_vqa_dataset, check_finetune_data, dataset_factory
    from src.data.pretrain_data import read_references
    from src.data.tokenizer import Tokenizer
    from src.engine.mixing import TaskMixer
    from src.engine.trainer import Trainer
    from src.evaluation.vqa import answer_list, validation_evaluator
    from src.models.opt import build_model
    from src.tasks.caption import VQATask

    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    if cfg.model.text.vocab_size <= 0:
        cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    _, has_audio = check_finetune_data(cfg.data.train, cfg, "vqa")
    model = build_model(cfg.model)
    make = dataset_factory(build_vqa_dataset, cfg, tokenizer, dist)
    make(0, 0)  # fail now, not at the first step, if the data cannot feed the task
    task = VQATask(model, has_audio, cfg.vqa.label_smoothing)
    evaluator = None
    if cfg.data.val:
        answers = None
        if cfg.vqa.closed_vocab:
            refs = read_references(cfg.data.train)
            answers = answer_list(refs, refs[0]["lang"], cfg.vqa.answer_list_size)
        evaluator = validation_evaluator(model, cfg, tokenizer, cfg.data.val, answers)
    trainer = Trainer(cfg, dist, model, {"vqa": task}, TaskMixer({"vqa": 1.0}, cfg.run.seed), {"vqa": make},
                      cfg.train.batch_size * dist.world_size, evaluator)
    return cfg, trainer



def main(argv=None):
    parser = trainer_parser(__doc__)
    args = parser.parse_args(argv)
    return run_training(args, build_vqa_training)


if __name__ == "__main__":
    sys.exit(run_main(main))
