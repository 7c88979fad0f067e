"""Read the demo's flat-coloured shapes back from pixels and check an image against the scene it should show.

The demo scenes (`src.data.demo`) are one or two saturated shapes on a light grey background, so a simple reader
suffices: pixels whose chroma (max - min over RGB) exceeds CHROMA_MIN are foreground; 4-connected foreground
components larger than MIN_AREA_FRACTION of the image are objects. For each object:

- colour: the demo colour (`COLOUR_RGB`) nearest to the component's median RGB;
- shape: the template (filled square, inscribed ellipse, or apex-up triangle, each stretched to the component's
  bounding box) with the highest IoU against the component;
- side: left / middle / right by the centroid's x (boundaries at 3/8 and 5/8 of the width; the demo centres objects
  at 1/4, 1/2, 3/4 with a jitter of 0.04).

`scene_accuracy` scores images against their scenes (the `objects` lists of the demo's scenes.jsonl): every scene
object is looked up on its own side (the largest read object there) and its colour and shape compared; an image is
exact when every object is right and nothing else was read. Used by `eval.py --task t2i --scenes` to say how many
generated images show the prompt's colours and shapes; run on the real test images it measures the reader itself.
"""
from collections import deque

import numpy as np

from src.data.demo import COLOUR_RGB, SHAPES

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
