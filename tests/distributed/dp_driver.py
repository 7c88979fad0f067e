"""Train the tiny pretraining config for a few steps and dump what this rank ended with (for test_data_parallel.py).

    python tests/distributed/dp_driver.py OUT_DIR [KEY=VALUE ...]        # one process
    msrun --worker_num=2 ... tests/distributed/dp_driver.py OUT_DIR [KEY=VALUE ...]

KEY=VALUE items override config/pretrain/tiny.yaml (data paths, tasks, steps, batch size). The trainer comes from
train_pretrain.build_pretraining under src.engine.context.setup_context (which initialises communication when msrun
started the process). Writes OUT_DIR/rank_<rank>.npz: `losses` (the logged loss of each step: the mean over the ranks)
and every model parameter under its name. The compile cache is left off, so every run compiles its own graphs.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out_dir, overrides = argv[0], argv[1:]
    sys.path.insert(0, ROOT)
    from src.config import load_config
    from src.engine.context import setup_context
    from train_pretrain import build_pretraining

    cfg = load_config(os.path.join(ROOT, "config", "pretrain", "tiny.yaml"),
                      [*overrides, f"run.output_dir={os.path.join(out_dir, 'run')}"])
    dist = setup_context(cfg)
    cfg, trainer = build_pretraining(cfg, dist)
    trainer.run()
    (task,) = trainer.steps
    losses = np.array(trainer.tracker.first[task], dtype=np.float64)
    params = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    np.savez(os.path.join(out_dir, f"rank_{dist.rank}.npz"), losses=losses, **params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
