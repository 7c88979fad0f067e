"""The matching head: fused [CLS] logits plus the towers' agreement against a running centre."""
import numpy as np
import pytest
from mindspore import Tensor

from src.data.labels import ITM_CLASSES, ITM_IMAGE_SWAPPED, ITM_MATCHED
from src.models.heads import MatchingHead
from src.models.opt import PAIR_PATTERN, THREE_MODAL_PATTERN


def numpy_logits(head, pooled, sims, scale, centre):
    w = head.dense.weight.asnumpy()
    b = head.dense.bias.asnumpy()
    gain = float(head.gain.asnumpy()) * MatchingHead.GAIN_STEP
    return pooled @ w.T + b + gain * scale * (sims - centre) @ head.pattern.asnumpy().T


def with_gain(head, gain):
    head.gain.set_data(Tensor(np.float32(gain / MatchingHead.GAIN_STEP)))
    return head


def test_a_new_head_is_the_dense_head_alone():
    rng = np.random.default_rng(1)
    head = MatchingHead(8, PAIR_PATTERN)
    pooled = rng.normal(size=(3, 8)).astype(np.float32)
    out = head(Tensor(pooled), Tensor(rng.normal(size=(3, 1)).astype(np.float32)), Tensor(np.float32(14.0)))
    expected = pooled @ head.dense.weight.asnumpy().T + head.dense.bias.asnumpy()
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_head_without_a_centre_in_eval_mode_adds_the_scaled_sims_through_the_pattern():
    rng = np.random.default_rng(0)
    head = with_gain(MatchingHead(8, PAIR_PATTERN), 1.0)
    head.set_train(False)
    pooled = rng.normal(size=(3, 8)).astype(np.float32)
    sims = np.array([[0.9], [0.1], [-0.4]], np.float32)
    out = head(Tensor(pooled), Tensor(sims), Tensor(np.float32(10.0))).asnumpy()
    np.testing.assert_allclose(out, numpy_logits(head, pooled, sims, 10.0, 0.0), rtol=1e-5, atol=1e-5)
    # with the same pooled input, "matched" minus "not matched" grows by 2 * scale per unit of agreement
    same = head(Tensor(np.repeat(pooled[:1], 3, 0)), Tensor(sims), Tensor(np.float32(10.0))).asnumpy()
    diff = same[:, 1] - same[:, 0]
    assert diff[0] - diff[1] == pytest.approx(2 * 10.0 * 0.8, rel=1e-4)


def test_training_updates_a_bias_corrected_running_centre_that_eval_then_uses():
    head = with_gain(MatchingHead(4, PAIR_PATTERN, centre_decay=0.9), 0.5)
    pooled = np.zeros((2, 4), np.float32)
    first = np.array([[0.2], [0.6]], np.float32)      # mean 0.4
    second = np.array([[1.0], [0.0]], np.float32)     # mean 0.5
    head.set_train(True)
    out1 = head(Tensor(pooled), Tensor(first), Tensor(np.float32(1.0))).asnumpy()
    np.testing.assert_allclose(out1, numpy_logits(head, pooled, first, 1.0, 0.4), atol=1e-5)
    out2 = head(Tensor(pooled), Tensor(second), Tensor(np.float32(1.0))).asnumpy()
    centre = (0.9 * 0.1 * 0.4 + 0.1 * 0.5) / (0.9 * 0.1 + 0.1)
    np.testing.assert_allclose(out2, numpy_logits(head, pooled, second, 1.0, centre), atol=1e-5)
    head.set_train(False)
    out3 = head(Tensor(pooled), Tensor(second), Tensor(np.float32(1.0))).asnumpy()
    np.testing.assert_allclose(out3, out2, atol=1e-6)  # eval reads the stored centre without moving it
    out4 = head(Tensor(pooled), Tensor(first), Tensor(np.float32(1.0))).asnumpy()
    np.testing.assert_allclose(out4, numpy_logits(head, pooled, first, 1.0, centre), atol=1e-5)


def test_three_modal_pattern_ranks_the_right_class_from_tower_agreement_alone():
    head = with_gain(MatchingHead(4, [THREE_MODAL_PATTERN[k] for k in range(ITM_CLASSES)]), 1.0)
    head.dense.weight.set_data(Tensor(np.zeros((ITM_CLASSES, 4), np.float32)))
    head.set_train(False)
    # (text-image, text-audio, image-audio) cosines around a centre of 0: each row agrees on a different subset
    sims = np.array([[0.5, 0.5, 0.5], [-0.5, 0.5, -0.5], [0.5, -0.5, -0.5], [-0.5, -0.5, 0.5], [-0.5, -0.5, -0.5]],
                    np.float32)
    out = head(Tensor(np.zeros((5, 4), np.float32)), Tensor(sims), Tensor(np.float32(5.0))).asnumpy()
    # each row is classified as the class whose pattern it follows
    assert [THREE_MODAL_PATTERN[k] for k in out.argmax(1)] == [tuple(int(v) for v in np.sign(row)) for row in sims]
    assert out.argmax(1)[0] == ITM_MATCHED and out.argmax(1)[1] == ITM_IMAGE_SWAPPED
