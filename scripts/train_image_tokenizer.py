"""Train the image tokenizer (VQ-VAE) whose codes the image decoder generates.

    python scripts/train_image_tokenizer.py --config config/vq/demo.yaml [--set vq.codebook_size=512 ...]

data.train / data.val: a manifest (.jsonl) or a MindRecord; every unique image (by image_id) is one sample, resized
and centre-cropped to vq.image_size. Loss: mean squared reconstruction error (normalised pixels) + vq.commitment x
commitment loss; the codebook follows EMA updates with dead-code restarts (see src/models/vq.py). With data.val set,
reconstruction PSNR (dB, 0-255 images) and codebook usage (perplexity, fraction of codes used) are measured every
train.eval_every steps and at the end into run.output_dir/results.json + results.md, with originals next to their
reconstructions in run.output_dir/reconstructions.png; the best-PSNR weights are kept in run.output_dir/best/.
Checkpoints, resume (checkpoint.resume=auto), metrics.jsonl and summary.json work as in the other trainers.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.engine.launch import run_training, trainer_parser  # noqa: E402
from src.utils.cli import run_main  # noqa: E402

GRID_COLUMNS = 8  # four original / reconstruction pairs per row


class ReconstructionEvaluator:
    """Trainer evaluator: validation PSNR and codebook usage, written to results.{json,md} and reconstructions.png."""

    def __init__(self, vq, source, cfg):
        self.vq, self.source, self.cfg = vq, source, cfg
        self.started = time.time()

    def __call__(self, step):
        from src.data.transforms import write_png
        from src.evaluation.image_tokenizer import evaluate_reconstruction
        from src.utils.results import write_results
        vq_cfg, out_dir = self.cfg.vq, self.cfg.run.output_dir
        metrics, pairs = evaluate_reconstruction(self.vq, self.source, vq_cfg.image_size, vq_cfg.eval_batch_size,
                                                 vq_cfg.grid_images)
        results = {"step": step, "split": self.cfg.data.val, **metrics,
                   "codes_per_image": self.vq.grid_size ** 2, "seconds_since_start": time.time() - self.started}
        if len(pairs):
            results["reconstructions"] = write_png(pairs, os.path.join(out_dir, "reconstructions.png"), GRID_COLUMNS)
        write_results(out_dir, "results", results)
        return {"score": metrics["psnr"], "psnr": metrics["psnr"], "perplexity": metrics["perplexity"],
                "used_fraction": metrics["used_fraction"]}


def build_tokenizer_training(cfg, dist):
    """(cfg, Trainer) training the VQ-VAE of cfg.vq on data.train, evaluated on data.val."""
    from src.data.image_dataset import ImageSource
    from src.engine.mixing import TaskMixer
    from src.engine.trainer import Trainer
    from src.models.vq import ReconstructionLoss, build_vq

    from src.data.transforms import image_rules
    rules = image_rules(cfg.data)
    train = ImageSource(cfg.data.train, cfg.data.workers, rules)
    val = ImageSource(cfg.data.val, cfg.data.workers, rules) if cfg.data.val else None
    vq = build_vq(cfg.vq)
    augment = {"random_resized_crop": cfg.data.random_crop, "crop_scale": cfg.data.crop_scale,
               "hflip": cfg.data.hflip}

    def make(epoch, start_batch):
        return train.training_dataset(cfg.vq.image_size, cfg.train.batch_size, cfg.run.seed, epoch, start_batch,
                                      dist.rank, dist.world_size, augment)

    make(0, 0)  # fail now, not at the first step, if the data cannot feed the model
    evaluator = ReconstructionEvaluator(vq, val, cfg) if val else None
    trainer = Trainer(cfg, dist, vq, {"vq": ReconstructionLoss(vq, cfg.vq.commitment)},
                      TaskMixer({"vq": 1.0}, cfg.run.seed), {"vq": make}, cfg.train.batch_size * dist.world_size,
                      evaluator)
    return cfg, trainer


def main(argv=None):
    args = trainer_parser(__doc__).parse_args(argv)
    return run_training(args, build_tokenizer_training)


if __name__ == "__main__":
    sys.exit(run_main(main))
