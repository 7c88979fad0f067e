"""Losses against hand-computed values and an independent numpy re-computation (PyNative, no graph compile)."""
import math

import numpy as np
import pytest
from mindspore import Tensor

from src.tasks.losses import (cross_entropy, feature_contrastive, feature_regression, gather_positions, info_nce,
                              masked_info_nce, normalize, present_rows, standardize, weighted_mean)


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


def value(t):
    return float(t.asnumpy())


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_cross_entropy(logits, labels, weights=None, smoothing=0.0):
    """Cross-entropy against the smoothed target (1 - e) * one_hot + e / V, weighted mean over positions."""
    vocab = logits.shape[-1]
    target = (1.0 - smoothing) * np.eye(vocab)[labels] + smoothing / vocab
    per_position = -(target * np_log_softmax(logits.astype(np.float64))).sum(-1)
    if weights is None:
        return per_position.mean()
    return (per_position * weights).sum() / weights.sum()


def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cross_entropy_two_classes_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = Tensor(np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], np.float32))
    labels = Tensor(np.array([1, 0], np.int32))
    assert value(cross_entropy(logits, labels)) == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, abs=1e-5)
    weights = Tensor(np.array([1.0, 3.0], np.float32))
    assert value(cross_entropy(logits, labels, weights)) == pytest.approx(
        (math.log(4 / 3) + 3 * math.log(4)) / 4, abs=1e-5)
    # smoothing 0.2 over 2 classes: target of row 0 = [0.1, 0.9]
    only_first = Tensor(np.array([1.0, 0.0], np.float32))
    assert value(cross_entropy(logits, labels, only_first, label_smoothing=0.2)) == pytest.approx(
        -(0.1 * math.log(0.25) + 0.9 * math.log(0.75)), abs=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_numpy_with_weights_and_smoothing(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, (2, 5)).astype(np.int32)
    weights = np.array([[1, 1, 0, 2, 0], [0, 1, 1, 1, 0.5]], np.float32)
    got = cross_entropy(Tensor(logits), Tensor(labels), Tensor(weights), label_smoothing=smoothing)
    assert value(got) == pytest.approx(np_cross_entropy(logits, labels, weights, smoothing), rel=1e-5)
    unweighted = cross_entropy(Tensor(logits), Tensor(labels), label_smoothing=smoothing)
    assert value(unweighted) == pytest.approx(np_cross_entropy(logits, labels, None, smoothing), rel=1e-5)


def test_uniform_logits_give_log_vocab_with_or_without_smoothing():
    logits = Tensor(np.zeros((3, 10), np.float32))
    labels = Tensor(np.array([0, 4, 9], np.int32))
    for smoothing in (0.0, 0.3):
        assert value(cross_entropy(logits, labels, label_smoothing=smoothing)) == pytest.approx(math.log(10), abs=1e-5)


def test_weighted_mean_with_all_zero_weights_is_zero_not_nan():
    assert value(weighted_mean(Tensor(np.array([3.0, 5.0], np.float32)), Tensor(np.zeros(2, np.float32)))) == 0.0


def test_feature_regression_by_hand():
    pred = np.array([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]], np.float32)
    target = np.array([[[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]]], np.float32)
    weights = np.array([[1.0, 0.0, 1.0]], np.float32)
    # position 0: (1 + 4) / 2 = 2.5; position 2: (4 + 4) / 2 = 4; position 1 is not masked
    got = feature_regression(Tensor(pred), Tensor(target), Tensor(weights))
    assert value(got) == pytest.approx((2.5 + 4.0) / 2, abs=1e-5)


def test_normalize_and_standardize_by_hand():
    np.testing.assert_allclose(normalize(Tensor(np.array([[3.0, 4.0]], np.float32))).asnumpy(), [[0.6, 0.8]],
                               rtol=1e-6)
    row = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)  # mean 2.5, variance 1.25
    np.testing.assert_allclose(standardize(Tensor(row)).asnumpy(), (row - 2.5) / math.sqrt(1.25 + 1e-6), rtol=1e-5)


def np_feature_contrastive(pred, target, weights, temperature):
    """Each masked prediction classifies its own target among the targets of all masked positions."""
    keep = weights.reshape(-1) > 0
    p = np_unit(pred.reshape(-1, pred.shape[-1])[keep].astype(np.float64))
    t = np_unit(target.reshape(-1, target.shape[-1])[keep].astype(np.float64))
    return np_cross_entropy(p @ t.T / temperature, np.arange(len(p)))


def test_feature_contrastive_matches_numpy_and_ignores_unmasked_positions():
    rng = np.random.default_rng(1)
    pred = rng.standard_normal((2, 4, 6)).astype(np.float32)
    target = rng.standard_normal((2, 4, 6)).astype(np.float32)
    weights = np.array([[1, 0, 1, 1], [0, 1, 0, 1]], np.float32)
    got = value(feature_contrastive(Tensor(pred), Tensor(target), Tensor(weights), 0.5))
    assert got == pytest.approx(np_feature_contrastive(pred, target, weights, 0.5), rel=1e-5)

    unmasked = weights[..., None] == 0
    pred2 = np.where(unmasked, rng.standard_normal(pred.shape), pred).astype(np.float32)
    target2 = np.where(unmasked, rng.standard_normal(target.shape), target).astype(np.float32)
    assert value(feature_contrastive(Tensor(pred2), Tensor(target2), Tensor(weights), 0.5)) == pytest.approx(
        got, rel=1e-5)


def test_feature_contrastive_rewards_similarity_to_the_positive():
    """Targets e0, e1, e2; prediction 0 turns away from e0 (towards e3, orthogonal to every target): the loss must
    grow with the angle, i.e. the positive with the highest cosine gives the lowest loss."""
    eye = np.eye(4, dtype=np.float32)
    target = eye[None, :3]
    weights = np.ones((1, 3), np.float32)
    losses = []
    for angle in np.linspace(0.0, math.pi, 5):
        pred = eye[None, :3].copy()
        pred[0, 0] = math.cos(angle) * eye[0] + math.sin(angle) * eye[3]
        losses.append(value(feature_contrastive(Tensor(pred), Tensor(target), Tensor(weights), 0.5)))
    assert all(a < b for a, b in zip(losses, losses[1:])), losses
    # angle 0: the logits are e_i . e_j / 0.5 = 2 * identity -> loss log(1 + 2 e^-2)
    assert losses[0] == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-5)


def test_info_nce_by_hand_and_symmetric():
    eye = Tensor(np.eye(2, dtype=np.float32))
    # logits = s * I: each row and column gives log(1 + e^-s)
    assert value(info_nce(eye, eye, 3.0)) == pytest.approx(math.log(1 + math.exp(-3.0)), abs=1e-5)

    rng = np.random.default_rng(2)
    a = np_unit(rng.standard_normal((4, 8))).astype(np.float32)
    b = np_unit(rng.standard_normal((4, 8))).astype(np.float32)
    logits = 5.0 * a.astype(np.float64) @ b.T.astype(np.float64)
    rows, cols = np_cross_entropy(logits, np.arange(4)), np_cross_entropy(logits.T, np.arange(4))
    assert abs(rows - cols) > 1e-2  # the two directions differ, so the average is really checked
    assert value(info_nce(Tensor(a), Tensor(b), 5.0)) == pytest.approx(0.5 * (rows + cols), rel=1e-5)
    assert value(info_nce(Tensor(b), Tensor(a), 5.0)) == pytest.approx(0.5 * (rows + cols), rel=1e-5)


def test_masked_info_nce_equals_info_nce_of_the_present_rows_and_zero_without_any():
    rng = np.random.default_rng(3)
    a = np_unit(rng.standard_normal((5, 8))).astype(np.float32)
    b = np_unit(rng.standard_normal((5, 8))).astype(np.float32)
    present = np.array([1, 0, 1, 1, 0], np.float32)
    keep = present == 1
    assert value(masked_info_nce(Tensor(a), Tensor(b), 5.0, Tensor(present))) == pytest.approx(
        value(info_nce(Tensor(a[keep]), Tensor(b[keep]), 5.0)), rel=1e-5)
    assert value(masked_info_nce(Tensor(a), Tensor(b), 5.0, Tensor(np.ones(5, np.float32)))) == pytest.approx(
        value(info_nce(Tensor(a), Tensor(b), 5.0)), rel=1e-5)
    assert value(masked_info_nce(Tensor(a), Tensor(b), 5.0, Tensor(np.zeros(5, np.float32)))) == 0.0


def test_present_rows_reads_any_real_frame():
    mask = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], np.int32)
    assert present_rows(Tensor(mask)).asnumpy().tolist() == [1.0, 0.0, 1.0]


def test_gather_positions_by_hand():
    seq = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    positions = np.array([[3, 0], [1, 1]], np.int32)
    got = gather_positions(Tensor(seq), Tensor(positions)).asnumpy()
    np.testing.assert_array_equal(got, [[seq[0, 3], seq[0, 0]], [seq[1, 1], seq[1, 1]]])
