"""Read the demo's flat-coloured shapes back from pixels and check an image against the scene it should show.

The demo scenes (`demo.data`) are one or two saturated shapes on a light grey background, so a simple reader
suffices: pixels whose chroma (max - min over RGB) exceeds CHROMA_MIN are foreground; 4-connected foreground
components larger than MIN_AREA_FRACTION of the image are objects. For each object:

- colour: the demo colour (`COLOUR_RGB`) nearest to the component's median RGB;
- shape: the template (filled square, inscribed ellipse, or apex-up triangle, each stretched to the component's
  bounding box) with the highest IoU against the component;
- side: left / middle / right by the centroid's x (boundaries at 3/8 and 5/8 of the width; the demo centres objects
  at 1/4, 1/2, 3/4 with a jitter of 0.04).

`scene_accuracy` scores images against their scenes (the `objects` lists of the demo's scenes.jsonl): every scene
object is looked up on its own side (the largest read object there) and its colour and shape compared; an image is
exact when every object is right and nothing else was read.

`t2i_metrics` is a metrics hook of the text-to-image evaluation (src/evaluation/hooks.py):

    python eval.py --task t2i --ckpt CKPT --vq VQ --split test --metrics_hook demo.scene_reader:t2i_metrics

says how many generated images show the prompt's colours and shapes on the right sides; run on the real test images
it measures the reader itself.
"""
import json
import os
from collections import deque

import numpy as np

from demo.data import COLOUR_RGB, SHAPES
from src.errors import UserError

SCENES_FILE = "scenes.jsonl"
SCENE_KEYS = {"colour", "shape", "position"}
CHROMA_MIN = 60
MIN_AREA_FRACTION = 0.005
SIDE_BOUNDS = (3 / 8, 5 / 8)
COLOUR_NAMES = tuple(COLOUR_RGB)
_PALETTE = np.array([COLOUR_RGB[c] for c in COLOUR_NAMES], np.float64)


def components(mask):
    """4-connected components of a boolean (H, W) mask: a list of (ys, xs) index arrays."""
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    seen = np.zeros_like(mask)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, ys, xs = deque([start]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append((np.array(ys), np.array(xs)))
    return found


def shape_templates(height, width):
    """{shape: boolean (height, width) template filling a bounding box of that size}."""
    v, u = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    return {"square": np.ones((height, width), bool),
            "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
            "triangle": v >= 2 * np.abs(u - 0.5)}


def classify_shape(ys, xs):
    """The SHAPES entry whose bounding-box template best overlaps (IoU) the component's pixels."""
    y0, x0 = ys.min(), xs.min()
    box = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)
    box[ys - y0, xs - x0] = True
    templates = shape_templates(*box.shape)
    iou = {s: (box & t).sum() / max((box | t).sum(), 1) for s, t in templates.items()}
    return max(SHAPES, key=lambda s: iou[s])


def read_objects(image):
    """uint8 (H, W, 3) image -> objects, largest first: dicts with colour, shape, side, x (centroid / width), area."""
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    rgb = pixels.astype(np.int32)
    mask = rgb.max(2) - rgb.min(2) > CHROMA_MIN
    objects = []
    for ys, xs in components(mask):
        if len(ys) < MIN_AREA_FRACTION * height * width:
            continue
        median = np.median(rgb[ys, xs], axis=0)
        colour = COLOUR_NAMES[int(((_PALETTE - median) ** 2).sum(1).argmin())]
        x = (xs.mean() + 0.5) / width
        side = "left" if x < SIDE_BOUNDS[0] else "right" if x > SIDE_BOUNDS[1] else "middle"
        objects.append({"colour": colour, "shape": classify_shape(ys, xs), "side": side, "x": float(x),
                        "area": int(len(ys))})
    return sorted(objects, key=lambda o: -o["area"])


def judge(objects, scene):
    """Compare read `objects` with a scene's object list (dicts with colour, shape, position).

    Returns {"colour": [bool per scene object], "shape": [...], "found": [...], "exact": bool}: an object is found
    when something was read on its side, and its colour / shape are right when the largest object read there has
    them; exact: every object found with the right colour and shape, and no more objects read than the scene has."""
    out = {"found": [], "colour": [], "shape": []}
    for target in scene:
        there = [o for o in objects if o["side"] == target["position"]]
        out["found"].append(bool(there))
        out["colour"].append(bool(there) and there[0]["colour"] == target["colour"])
        out["shape"].append(bool(there) and there[0]["shape"] == target["shape"])
    out["exact"] = len(objects) == len(scene) and all(out["colour"]) and all(out["shape"])
    return out


def scene_accuracy(images, scenes):
    """Percentages over the scenes' objects (found, colour right, shape right, both right) and over images (exact)
    of uint8 images (N, H, W, 3) against their scenes (N lists of objects)."""
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images for {len(scenes)} scenes")
    verdicts = [judge(read_objects(image), scene) for image, scene in zip(images, scenes)]
    per_object = {key: [v for verdict in verdicts for v in verdict[key]] for key in ("found", "colour", "shape")}
    both = [c and s for verdict in verdicts for c, s in zip(verdict["colour"], verdict["shape"])]
    return {"objects": len(both), "found": _percent(per_object["found"]), "colour": _percent(per_object["colour"]),
            "shape": _percent(per_object["shape"]), "colour_and_shape": _percent(both),
            "exact": _percent([v["exact"] for v in verdicts])}


def best_candidate_accuracy(candidates, scenes):
    """What a perfect re-ranking could reach: for each scene, of its candidate images (uint8 (C, H, W, 3)), the one
    with the most objects of the right shape, and whether any candidate is exact. Returns {"shape": percent of all
    the scenes' objects right in those best candidates, "exact": percent of scenes with an exact candidate}."""
    if len(candidates) != len(scenes):
        raise ValueError(f"{len(candidates)} candidate sets for {len(scenes)} scenes")
    right, exact = 0, []
    for images, scene in zip(candidates, scenes):
        verdicts = [judge(read_objects(image), scene) for image in images]
        right += max(sum(v["shape"]) for v in verdicts)
        exact.append(any(v["exact"] for v in verdicts))
    objects = sum(len(scene) for scene in scenes)
    return {"shape": 100.0 * right / objects if objects else 0.0, "exact": _percent(exact)}


def _percent(flags):
    return 100.0 * float(np.mean(flags)) if flags else 0.0


def read_scenes(path):
    """{record id: list of objects (colour, shape, position, ...)} from a scenes file such as the demo's
    data/demo/scenes.jsonl (one JSON object per line with "id" and "objects")."""
    if not os.path.isfile(path):
        raise UserError(f"scenes file {path} does not exist; the demo writes it as <demo data>/{SCENES_FILE}")
    scenes = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                objects = record["objects"]
                complete = all(SCENE_KEYS <= set(o) for o in objects)
                scenes[record["id"]] = objects
            except (ValueError, KeyError, TypeError):
                complete = False
            if not complete:
                raise UserError(f"{path}, line {number}: not a scene record; each line needs \"id\" and \"objects\", "
                                "a list of objects with colour, shape and position (as demo.data writes them)")
    return scenes


def find_scenes(data_path):
    """The scenes.jsonl of the demo data `data_path` belongs to: next to it (a manifest such as data/demo/test.jsonl)
    or one folder up (a MindRecord such as data/demo/mindrecord/test.mindrecord)."""
    folder = os.path.dirname(os.path.abspath(data_path))
    candidates = [os.path.join(folder, SCENES_FILE), os.path.join(os.path.dirname(folder), SCENES_FILE)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"demo.scene_reader:t2i_metrics found no {SCENES_FILE} for {data_path} (looked for "
                    f"{' and '.join(candidates)}); evaluate demo data (python -m demo.data writes {SCENES_FILE})")


def t2i_metrics(evaluation):
    """Metrics hook of `eval.py --task t2i` (src.evaluation.hooks): the scene reader's accuracies (percent) of the
    best and the first sampled candidates and of the real images (the reader's own accuracy) against each prompt's
    scene, scene_<found|colour|shape|colour_and_shape|exact>[_first_sample|_real_images], the number of objects
    (scene_objects), and what a perfect re-ranking could pick: scene_shape_best_candidate (each prompt's candidate
    with the most right shapes) and scene_exact_any_candidate (prompts with at least one exact candidate)."""
    if evaluation.task != "t2i":
        raise UserError(f"demo.scene_reader:t2i_metrics reads generated images; it was given a {evaluation.task} "
                        "evaluation (use it with eval.py --task t2i)")
    path = find_scenes(evaluation.data)
    scenes = read_scenes(path)
    records = evaluation.records
    missing = [r["id"] for r in records if r["id"] not in scenes]
    if missing:
        raise UserError(f"{path} has no scene for {len(missing)} of the {len(records)} records (first: "
                        f"{missing[0]}); give the scenes.jsonl written together with this data")
    wanted = [scenes[r["id"]] for r in records]
    pools = {"": np.stack([r["candidates"][0] for r in records]),
             "_first_sample": np.stack([r["candidates"][r["first_sample"]] for r in records]),
             "_real_images": np.stack([r["image"] for r in records])}
    metrics = {}
    for suffix, images in pools.items():
        accuracy = scene_accuracy(images, wanted)
        metrics["scene_objects"] = accuracy.pop("objects")
        metrics.update({f"scene_{key}{suffix}": value for key, value in accuracy.items()})
    best = best_candidate_accuracy([r["candidates"] for r in records], wanted)
    metrics.update({"scene_shape_best_candidate": best["shape"], "scene_exact_any_candidate": best["exact"]})
    return metrics
