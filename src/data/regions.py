"""Pre-extracted region features (model.image.mode: features): the per-image .npz file, the 7-d box geometry, and the
packed image column the pipelines feed the model.

One .npz per image (docs/data_format.md, "Region features"):

    feat        (K, feature_dim) float   region features (e.g. 2048-d Faster R-CNN / BUTD)
    boxes       (K, 7)           float   [x1, y1, x2, y2, w, h, w*h], normalised by the image size   -- or --
    pred_boxes  (K, 4)           float   [x1, y1, x2, y2] in pixels, with `width` and `height` (the original OPT's
                                          files), converted to the 7-d form by box_geometry
    width, height                scalar  image size in pixels (needed with pred_boxes only)

The model takes one float column per image, (max_regions, feature_dim + box_dim + 1) = [features | boxes | 1 where the
region is real], so every task keeps its single `image` input whatever the image mode (OPTModel.split_regions).
"""
import os

import numpy as np

from src.errors import UserError


def region_width(image_cfg):
    """Width of the packed column: feature_dim + box_dim + 1."""
    return image_cfg.feature_dim + image_cfg.box_dim + 1


def box_geometry(xyxy, width, height):
    """(K, 4) pixel boxes [x1, y1, x2, y2] -> (K, 7) [x1/W, y1/H, x2/W, y2/H, w/W, h/H, (w/W)(h/H)] (the original)."""
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = (xyxy[:, i] for i in range(4))
    w, h = (x2 - x1) / float(width), (y2 - y1) / float(height)
    return np.stack([x1 / width, y1 / height, x2 / width, y2 / height, w, h, w * h], 1).astype(np.float32)


def read_regions(path, feature_dim, box_dim=7):
    """(feats (K, feature_dim), boxes (K, box_dim)) float32 from one .npz; UserError naming the file and key on any
    problem."""
    if not os.path.isfile(path):
        raise UserError(f"region-feature file {path} does not exist; point the manifest's 'regions' at a .npz with "
                        f"'feat' and 'boxes' (docs/data_format.md)")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except Exception as err:  # zipfile / ValueError / OSError
        raise UserError(f"cannot read region-feature file {path}: {err}") from err
    if "feat" not in fields:
        raise UserError(f"{path} has no 'feat' array (regions x {feature_dim}); see docs/data_format.md")
    feats = np.asarray(fields["feat"], np.float32)
    if feats.ndim != 2 or feats.shape[1] != feature_dim or not len(feats):
        raise UserError(f"{path}: 'feat' has shape {feats.shape}, expected (regions >= 1, {feature_dim}) "
                        f"(model.image.feature_dim)")
    if "boxes" in fields:
        boxes = np.asarray(fields["boxes"], np.float32)
    elif "pred_boxes" in fields and "width" in fields and "height" in fields:
        boxes = box_geometry(fields["pred_boxes"], float(fields["width"]), float(fields["height"]))
    else:
        raise UserError(f"{path} needs 'boxes' (regions x {box_dim}, normalised) or 'pred_boxes' with 'width' and "
                        f"'height'; see docs/data_format.md")
    if boxes.shape != (len(feats), box_dim):
        raise UserError(f"{path}: boxes have shape {boxes.shape}, expected ({len(feats)}, {box_dim}) "
                        f"(model.image.box_dim)")
    if not (np.isfinite(feats).all() and np.isfinite(boxes).all()):
        raise UserError(f"{path} holds NaN or infinite values")
    return feats, boxes


def pack_regions(feats, boxes, max_regions):
    """(max_regions, D + box_dim + 1) float32: the first `max_regions` regions, zero rows after them, the last column
    1 for real regions."""
    feats, boxes = np.asarray(feats, np.float32), np.asarray(boxes, np.float32)
    n = min(len(feats), max_regions)
    out = np.zeros((max_regions, feats.shape[1] + boxes.shape[1] + 1), np.float32)
    out[:n, :feats.shape[1]] = feats[:n]
    out[:n, feats.shape[1]:-1] = boxes[:n]
    out[:n, -1] = 1.0
    return out
