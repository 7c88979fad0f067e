"""How fast an image encoder learns what the demo scenes hold: a supervised probe, trained from scratch.

    python -m demo.probe_image_encoder --data data/demo --out outputs/probe/conv
    python -m demo.probe_image_encoder --data data/demo --out outputs/probe/linear --set model.image.stem=linear

Builds the image encoder of --config (default config/model/small.yaml, the demo model) with a linear head on its
global token and trains both on the demo's train images to name, for each of the three positions (left, middle,
right), the shape there (or "empty") and its colour. The labels come from the data's scenes.jsonl
(python -m demo.data writes it). Every --eval_every steps it reports, on the val + test images, the share of
objects whose shape / colour is named right (chance 1/3 and 1/6) and the share of images read exactly.
This isolates the image encoder: the demo's shape, count and position answers need it to see the objects, and the
probe says in a minute how quickly a given encoder design can. Writes config.yaml, metrics.jsonl and results.json
(+ .md) to --out. Defaults: --set train.steps=600 train.batch_size=16 optim.lr=5e-4 optim.warmup_steps=20.
"""
import json
import os
import sys
import time

import numpy as np

from demo import data as demo_data
from src.utils.cli import docstring_parser, run_main
from src.errors import UserError

POSITIONS = demo_data.POSITIONS
SHAPES = ("empty",) + demo_data.SHAPES       # label 0: nothing at that position
COLOURS = ("empty",) + demo_data.COLOURS
DEFAULTS = ("train.steps=600", "train.batch_size=16", "optim.lr=5e-4", "optim.warmup_steps=20")


def scene_labels(objects, where):
    """(shape ids, colour ids) per position, 0 where the position is empty. `where` names the record in errors."""
    shapes, colours = np.zeros(len(POSITIONS), np.int32), np.zeros(len(POSITIONS), np.int32)
    for obj in objects:
        try:
            slot = POSITIONS.index(obj["position"])
            shapes[slot], colours[slot] = SHAPES.index(obj["shape"]), COLOURS.index(obj["colour"])
        except (KeyError, ValueError):
            raise UserError(f"{where}: object {obj} is not a demo object (position in {POSITIONS}, shape in "
                            f"{SHAPES[1:]}, colour in {COLOURS[1:]})") from None
    return shapes, colours


def load_split(data_dir, split, scenes, image_size):
    """Images (N, 3, S, S) of `split`'s manifest and their labels ((N, 3) shapes, (N, 3) colours)."""
    from src.data.manifest import read_manifest
    from src.data.transforms import load_image
    records = read_manifest(os.path.join(data_dir, f"{split}.jsonl"))
    images, shapes, colours = [], [], []
    for record in records:
        if record["id"] not in scenes:
            raise UserError(f"{data_dir}/scenes.jsonl has no scene for '{record['id']}' of the {split} split; "
                            "regenerate the data with python -m demo.data")
        images.append(load_image(record["image_path"], image_size))
        s, c = scene_labels(scenes[record["id"]], f"{data_dir}/scenes.jsonl '{record['id']}'")
        shapes.append(s)
        colours.append(c)
    return np.stack(images), np.stack(shapes), np.stack(colours)


def probe_accuracy(shape_pred, colour_pred, shapes, colours):
    """Shares of present objects with the right shape / colour, and of images whose every position (the empty ones
    included) is read right."""
    present = shapes > 0
    exact = np.all((shape_pred == shapes) & (colour_pred == colours), axis=1)
    return {"shape": float(np.mean(shape_pred[present] == shapes[present])),
            "colour": float(np.mean(colour_pred[present] == colours[present])),
            "exact_images": float(np.mean(exact))}


def build_probe(cfg):
    """(probe Cell: images -> (shape logits (B, 3, 4), colour logits (B, 3, 7)), loss Cell)."""
    from mindspore import nn, ops

    from src.models.encoders import ImageEncoder

    class Probe(nn.Cell):
        def __init__(self):
            super().__init__()
            self.image_encoder = ImageEncoder(cfg.model, cfg.model.image)
            self.head = nn.Dense(cfg.model.image.hidden, len(POSITIONS) * (len(SHAPES) + len(COLOURS)))

        def construct(self, images):
            tokens, _ = self.image_encoder(images)
            logits = ops.reshape(self.head(tokens[:, 0]), (-1, len(POSITIONS), len(SHAPES) + len(COLOURS)))
            return logits[:, :, :len(SHAPES)], logits[:, :, len(SHAPES):]

    class ProbeLoss(nn.Cell):
        def __init__(self, probe):
            super().__init__()
            self.probe = probe
            self.ce = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

        def construct(self, images, shapes, colours):
            shape_logits, colour_logits = self.probe(images)
            return (self.ce(ops.reshape(shape_logits, (-1, len(SHAPES))), ops.reshape(shapes, (-1,)))
                    + self.ce(ops.reshape(colour_logits, (-1, len(COLOURS))), ops.reshape(colours, (-1,))))

    probe = Probe()
    return probe, ProbeLoss(probe)


def evaluate(probe, images, batch_size=100):
    import mindspore as ms
    probe.set_train(False)
    shape_pred, colour_pred = [], []
    for i in range(0, len(images), batch_size):
        shape_logits, colour_logits = probe(ms.Tensor(images[i:i + batch_size]))
        shape_pred.append(shape_logits.asnumpy().argmax(-1))
        colour_pred.append(colour_logits.asnumpy().argmax(-1))
    probe.set_train(True)
    return np.concatenate(shape_pred), np.concatenate(colour_pred)


def main(argv=None):
    from src.config import add_config_arguments, load_config, save_config
    parser = docstring_parser(__doc__, "python -m demo.probe_image_encoder")
    add_config_arguments(parser, default_config="config/model/small.yaml")
    parser.add_argument("--data", default="data/demo", help="demo data folder (train/val/test.jsonl, scenes.jsonl)")
    parser.add_argument("--out", default="outputs/probe", help="output folder")
    parser.add_argument("--eval_every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.eval_every < 1:
        raise UserError(f"--eval_every must be at least 1, got {args.eval_every}")
    cfg = load_config(args.config, list(DEFAULTS) + list(args.overrides or ()))
    if cfg.model.image.mode != "pixels":
        raise UserError("the probe reads pixels: model.image.mode must be 'pixels'")
    scenes_path = os.path.join(args.data, "scenes.jsonl")
    if not os.path.isfile(scenes_path):
        raise UserError(f"{scenes_path} not found: the probe needs the demo data's scenes "
                        "(python -m demo.data --out DIR writes it)")

    import mindspore as ms
    from tqdm import tqdm

    from src.engine.optim import apply_lr, build_optimizer
    from src.engine.run_log import MetricsLog
    from demo.scene_reader import read_scenes
    from src.engine.train_step import LossScale, TrainStep
    from src.utils.results import write_results

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(args.seed)
    scenes = read_scenes(scenes_path)
    size = cfg.model.image.image_size
    train = load_split(args.data, "train", scenes, size)
    held_out = [load_split(args.data, split, scenes, size) for split in ("val", "test")]
    test = tuple(np.concatenate(parts) for parts in zip(*held_out))

    save_config(cfg, args.out)
    log = MetricsLog(args.out, enabled=True)
    probe, loss_net = build_probe(cfg)
    steps, batch = cfg.train.steps, cfg.train.batch_size
    optimizer = build_optimizer(probe.trainable_params(), cfg.optim, steps)
    step = TrainStep(loss_net, optimizer, LossScale("none"), clip_norm=cfg.train.clip_norm)
    step.set_train(True)
    rng = np.random.default_rng(args.seed)
    history, started = [], time.time()
    bar = tqdm(range(1, steps + 1), desc="probe", unit="step")
    for n in bar:
        idx = rng.integers(0, len(train[0]), batch)
        apply_lr(optimizer)
        loss = step(*(ms.Tensor(part[idx]) for part in train))[0]
        if n % args.eval_every == 0 or n == steps:
            accuracy = probe_accuracy(*evaluate(probe, test[0]), test[1], test[2])
            record = {"step": n, "loss": float(loss.asnumpy()), **accuracy, "seconds": time.time() - started}
            history.append(record)
            log.write(record)
            bar.write(json.dumps(record))
    log.close()
    chance = {"shape": 1 / len(demo_data.SHAPES), "colour": 1 / len(demo_data.COLOURS)}
    results = {"config": args.config, "stem": cfg.model.image.stem, "train_images": len(train[0]),
               "held_out_images": len(test[0]), "chance": chance, "final": history[-1], "history": history}
    write_results(args.out, "results", results, table_rows=history)
    final = history[-1]
    print(f"stem {cfg.model.image.stem}: after {steps} steps shape {100 * final['shape']:.1f}%, colour "
          f"{100 * final['colour']:.1f}%, exact images {100 * final['exact_images']:.1f}% "
          f"({len(test[0])} held-out images) -> {args.out}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
