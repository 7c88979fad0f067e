"""Loss functions shared by the tasks. All return fp32 scalars; weights select the positions that count."""
import mindspore as ms
from mindspore import ops

from src.models.layers import NEG_INF


def weighted_mean(values, weights):
    weights = ops.cast(weights, ms.float32)
    return (ops.cast(values, ms.float32) * weights).sum() / ops.maximum(weights.sum(), 1e-6)


def cross_entropy(logits, labels, weights=None, label_smoothing=0.0):
    """Token cross-entropy over the last axis of `logits` (..., V) with integer `labels` (...).

    With label smoothing e the target puts 1 - e on the label and e spread uniformly over all V classes. `weights`
    (...) selects and weighs positions; the result is the weighted mean.
    """
    logp = ops.log_softmax(ops.cast(logits, ms.float32), -1)
    nll = -ops.gather_elements(logp, -1, ops.expand_dims(ops.cast(labels, ms.int32), -1)).squeeze(-1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    if weights is None:
        return nll.mean()
    return weighted_mean(nll, weights)


def feature_regression(pred, target, weights):
    """Mean squared error per position (averaged over the feature axis), weighted mean over positions."""
    err = ops.square(ops.cast(pred, ms.float32) - ops.cast(target, ms.float32)).mean(-1)
    return weighted_mean(err, weights)


def normalize(x, eps=1e-12):
    x = ops.cast(x, ms.float32)
    return x / ops.sqrt((x * x).sum(-1, keepdims=True) + eps)


def standardize(x, eps=1e-6):
    """Parameter-free LayerNorm over the last axis (targets of masked feature regression)."""
    x = ops.cast(x, ms.float32)
    mean = x.mean(-1, keep_dims=True)
    var = ops.square(x - mean).mean(-1, keep_dims=True)
    return (x - mean) / ops.sqrt(var + eps)


def feature_contrastive(pred, target, weights, temperature):
    """InfoNCE over masked positions: each masked prediction must pick its own target among the targets of all masked
    positions in the batch. Logits are cosine similarity / temperature (the original used (1 - cos) / T, which
    rewards dissimilarity to the positive)."""
    n = pred.shape[0] * pred.shape[1]
    p = normalize(pred.reshape(n, -1))
    t = normalize(target.reshape(n, -1))
    w = ops.cast(weights.reshape(n), ms.float32)
    logits = ops.matmul(p, t.T) / temperature + ops.expand_dims((1.0 - w) * NEG_INF, 0)
    labels = ops.arange(0, n, dtype=ms.int32)
    return cross_entropy(logits, labels, w)


def info_nce(a, b, scale):
    """Symmetric InfoNCE between two batches of normalised embeddings (B, D); pair i is the positive of row i."""
    logits = ops.matmul(a, b.T) * scale
    labels = ops.arange(0, a.shape[0], dtype=ms.int32)
    return 0.5 * (cross_entropy(logits, labels) + cross_entropy(logits.T, labels))


def masked_info_nce(a, b, scale, present):
    """info_nce over the rows with `present` (B,) 1: absent rows are neither positives nor negatives, so the value
    equals info_nce of the present rows alone; 0 (and no gradient) when no row is present."""
    w = ops.cast(present, ms.float32)
    pair = ops.expand_dims(w, 1) * ops.expand_dims(w, 0)
    logits = ops.matmul(a, b.T) * scale + (1.0 - pair) * NEG_INF
    labels = ops.arange(0, a.shape[0], dtype=ms.int32)
    return 0.5 * (cross_entropy(logits, labels, w) + cross_entropy(logits.T, labels, w))


def present_rows(frame_mask):
    """(B,) float32: 1 for samples whose audio has at least one real frame (the per-sample audio presence)."""
    return ops.cast(ops.cast(frame_mask, ms.float32).sum(-1) > 0, ms.float32)


def gather_positions(seq, positions):
    """seq (B, L, H), positions (B, P) int -> (B, P, H)."""
    index = ops.broadcast_to(ops.expand_dims(ops.cast(positions, ms.int32), -1),
                             (positions.shape[0], positions.shape[1], seq.shape[2]))
    return ops.gather_elements(seq, 1, index)
