"""TrainStep in GRAPH_MODE: dynamic loss scaling skips overflowing steps and recovers, gradient accumulation equals one
big batch, clipping bounds the update and reports the raw norm.

The tiny model's MLM task is driven through two compiled steps (accumulation 1 and 2) once, in a module fixture, and
every test reads the recorded results; a one-layer net with hand-computed gradients covers the unclipped path and the
`none` / `fixed` loss-scale modes; LossScale.update runs in PyNative.
"""
import math
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from src.engine.optim import select_trainable
from src.engine.train_step import LossScale, TrainStep
from src.models.opt import build_model
from src.tasks.pretrain import build_task
from tests.helpers import model_config, task_batch

BATCH = 8
CLIP = 0.1          # well below the raw gradient norm of the untrained model (~1.3)
POISON = 1e38       # loss (~4) * 1e38 * loss scale 2**10 overflows float32


class Poisonable(nn.Cell):
    """The wrapped loss times mean(factor): factor 1 leaves it unchanged, factor POISON makes the scaled loss and its
    gradients infinite."""

    def __init__(self, loss_net):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net

    def construct(self, factor, *inputs):
        return self.loss_net(*inputs) * factor.mean()


def snapshot(params):
    return {p.name: p.asnumpy().copy() for p in params}


def global_norm(arrays):
    return math.sqrt(sum(float(np.square(a.astype(np.float64)).sum()) for a in arrays))


def mlm_net(cfg, model):
    """MLM on text and image (without audio the two step graphs compile in about half the time)."""
    return Poisonable(build_task("mlm", model, cfg.pretrain, False))


def sgd_step(net, accumulation):
    return TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=1.0),
                     LossScale("dynamic", init=2 ** 10, factor=2, window=2), clip_norm=CLIP, accumulation=accumulation)


def run_step(step, net, inputs):
    before = snapshot(net.trainable_params())
    loss, finite, scale, grad_norm = step(*inputs)
    after = snapshot(net.trainable_params())
    return SimpleNamespace(loss=float(loss.asnumpy()), finite=bool(finite.asnumpy()), scale=float(scale.asnumpy()),
                           grad_norm=float(grad_norm.asnumpy()), delta={k: after[k] - before[k] for k in after},
                           after=after, scale_after=float(step.loss_scale.scale.asnumpy()),
                           good_steps_after=int(step.loss_scale.good_steps.asnumpy()))


@pytest.fixture(scope="module")
def runs():
    """Reference loss and gradients (PyNative), then steps normal / overflow / normal / normal with accumulation 1,
    and one normal step with accumulation 2 on a clone of the initial parameters."""
    cfg = model_config("tiny")
    ms.set_seed(0)
    net = mlm_net(cfg, build_model(cfg.model))
    batch = task_batch("mlm", cfg.model, cfg.pretrain, batch=BATCH, seed=0, has_audio=False)
    data = [Tensor(batch[name]) for name in net.loss_net.input_names]
    normal = [Tensor(np.ones(BATCH, np.float32))] + data
    overflow = [Tensor(np.full(BATCH, POISON, np.float32))] + data
    start = snapshot(net.get_parameters())  # buffers too, for the clone

    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ref_loss, ref_grads = ms.value_and_grad(net, None, net.trainable_params())(*normal)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    names = [p.name for p in net.trainable_params()]

    step = sgd_step(net, 1)
    plain = [run_step(step, net, inputs) for inputs in (normal, overflow, normal, normal)]

    clone = build_model(cfg.model)
    not_loaded, _ = ms.load_param_into_net(clone, {k: Parameter(Tensor(v), name=k) for k, v in start.items()})
    assert not not_loaded
    clone_net = mlm_net(cfg, clone)
    accumulated = run_step(sgd_step(clone_net, 2), clone_net, normal)
    return SimpleNamespace(ref_loss=float(ref_loss.asnumpy()), ref_grads=dict(zip(names, (g.asnumpy() for g in
                                                                                             ref_grads))),
                           plain=plain, accumulated=accumulated)


@pytest.mark.slow
def test_first_step_reports_the_unscaled_loss_and_the_raw_gradient_norm(runs):
    first = runs.plain[0]
    assert first.finite and first.scale == 2 ** 10
    assert first.loss == pytest.approx(runs.ref_loss, rel=1e-5)
    ref_norm = global_norm(runs.ref_grads.values())
    assert ref_norm > 5 * CLIP
    assert first.grad_norm == pytest.approx(ref_norm, rel=1e-4)


@pytest.mark.slow
def test_clipped_update_is_clip_norm_along_the_raw_gradient(runs):
    first = runs.plain[0]
    ref_norm = global_norm(runs.ref_grads.values())
    assert global_norm(first.delta.values()) == pytest.approx(CLIP, rel=1e-4)  # SGD, lr 1: update = -clipped grad
    for name, grad in runs.ref_grads.items():
        np.testing.assert_allclose(first.delta[name], -CLIP * grad / ref_norm, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_overflow_step_is_skipped_and_halves_the_scale(runs):
    first, overflow = runs.plain[:2]
    assert first.scale_after == 2 ** 10 and first.good_steps_after == 1  # one finite step: window 2 not reached
    assert not overflow.finite and not math.isfinite(overflow.loss)
    assert overflow.scale == 2 ** 10  # the scale in use during the step
    assert overflow.scale_after == 2 ** 9 and overflow.good_steps_after == 0
    assert all(not np.any(d) for d in overflow.delta.values())


@pytest.mark.slow
def test_normal_steps_after_an_overflow_update_and_regrow_the_scale(runs):
    third, fourth = runs.plain[2:]
    assert third.finite and third.scale == 2 ** 9
    assert global_norm(third.delta.values()) == pytest.approx(CLIP, rel=1e-4)
    assert third.scale_after == 2 ** 9 and third.good_steps_after == 1
    assert fourth.finite and fourth.scale == 2 ** 9
    assert global_norm(fourth.delta.values()) == pytest.approx(CLIP, rel=1e-4)
    assert fourth.scale_after == 2 ** 10 and fourth.good_steps_after == 0  # window 2 reached: scale x2
    assert fourth.loss < runs.plain[0].loss


@pytest.mark.slow
def test_accumulation_over_two_micro_batches_equals_one_big_batch(runs):
    plain, accumulated = runs.plain[0], runs.accumulated
    assert accumulated.finite
    assert accumulated.loss == pytest.approx(plain.loss, rel=1e-5)
    assert accumulated.grad_norm == pytest.approx(plain.grad_norm, rel=1e-5)  # the mean, not the sum, of the parts
    difference = global_norm(accumulated.delta[k] - plain.delta[k] for k in plain.delta)
    assert difference < 1e-3 * CLIP
    for name, value in plain.after.items():
        np.testing.assert_allclose(accumulated.after[name], value, atol=1e-5, err_msg=name)


class Regression(nn.Cell):
    """mean((x . w + b - y)^2) * mean(factor) with a known Dense(2, 1)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(2, 1, weight_init=Tensor(np.array([[0.5, -1.0]], np.float32)),
                              bias_init=Tensor(np.array([0.25], np.float32)))

    def construct(self, x, y, factor):
        return ((self.dense(x) - y) ** 2).mean() * factor.mean()


@pytest.mark.parametrize("mode, accumulation, clip_norm", [("none", 1, 0.0), ("fixed", 2, 100.0)])
def test_unclipped_step_by_hand_and_overflow_without_dynamic_scaling(mode, accumulation, clip_norm):
    x = np.array([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5], [2.0, -1.0]], np.float32)
    y = np.array([[1.0], [0.0], [2.0], [-1.0]], np.float32)
    residual = x @ np.array([0.5, -1.0]) + 0.25 - y[:, 0]
    grad_w, grad_b = 2 * (residual[:, None] * x).mean(0), 2 * residual.mean()
    net = Regression()
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=0.1), LossScale(mode, init=2 ** 10),
                     clip_norm=clip_norm, accumulation=accumulation)
    ones = Tensor(np.ones(4, np.float32))
    loss, finite, scale, grad_norm = step(Tensor(x), Tensor(y), ones)
    assert bool(finite.asnumpy()) and float(scale.asnumpy()) == (1.0 if mode == "none" else 2 ** 10)
    assert float(loss.asnumpy()) == pytest.approx(float(np.mean(residual ** 2)), rel=1e-6)
    assert float(grad_norm.asnumpy()) == pytest.approx(math.sqrt(np.sum(grad_w ** 2) + grad_b ** 2), rel=1e-6)
    np.testing.assert_allclose(net.dense.weight.asnumpy(), [[0.5, -1.0] - 0.1 * grad_w], rtol=1e-6)
    np.testing.assert_allclose(net.dense.bias.asnumpy(), [0.25 - 0.1 * grad_b], rtol=1e-6)

    weight = net.dense.weight.asnumpy().copy()
    _, finite, scale, _ = step(Tensor(x), Tensor(y), Tensor(np.full(4, np.inf, np.float32)))
    assert not bool(finite.asnumpy())
    np.testing.assert_array_equal(net.dense.weight.asnumpy(), weight)
    assert float(step.loss_scale.scale.asnumpy()) == float(scale.asnumpy())  # none / fixed never change the scale


def test_frozen_parameter_keeps_its_value_and_leaves_the_gradient_norm(pynative):
    """train.freeze: with the weight frozen only the bias moves, by its own hand-computed gradient, and the reported
    norm is that of the bias gradient alone."""
    x = np.array([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5], [2.0, -1.0]], np.float32)
    y = np.array([[1.0], [0.0], [2.0], [-1.0]], np.float32)
    grad_b = 2 * (x @ np.array([0.5, -1.0]) + 0.25 - y[:, 0]).mean()
    net = Regression()
    step = TrainStep(net, nn.SGD(select_trainable(net.trainable_params(), ["dense.weight"]), learning_rate=0.1),
                     LossScale("none"), clip_norm=0.0)
    _, _, _, grad_norm = step(Tensor(x), Tensor(y), Tensor(np.ones(4, np.float32)))
    np.testing.assert_array_equal(net.dense.weight.asnumpy(), [[0.5, -1.0]])
    np.testing.assert_allclose(net.dense.bias.asnumpy(), [0.25 - 0.1 * grad_b], rtol=1e-6)
    assert float(grad_norm.asnumpy()) == pytest.approx(abs(grad_b), rel=1e-6)


def test_loss_scale_update_grows_after_window_and_never_drops_below_one(pynative):
    scale = LossScale("dynamic", init=4.0, factor=2.0, window=3)
    finite, overflow = Tensor(np.array(True)), Tensor(np.array(False))
    seen = []
    for flag in (finite, finite, finite, overflow, overflow, overflow, overflow, finite):
        scale.update(flag)
        seen.append((float(scale.scale.asnumpy()), int(scale.good_steps.asnumpy())))
    assert seen == [(4.0, 1), (4.0, 2), (8.0, 0), (4.0, 0), (2.0, 0), (1.0, 0), (1.0, 0), (1.0, 1)]
    assert float(LossScale("none", init=8.0).scale.asnumpy()) == 1.0
    with pytest.raises(ValueError, match="train.loss_scale"):
        LossScale("static")


def test_set_train_on_the_step_reaches_every_cell_of_the_model():
    """The model is only called through value_and_grad; the step must still switch its dropout on and off."""
    cfg = model_config("tiny")
    model = build_model(cfg.model)
    model.set_train(False)
    step = sgd_step(mlm_net(cfg, model), 1)
    step.set_train(True)
    assert all(cell.training for _, cell in model.cells_and_names())
    step.set_train(False)
    assert not any(cell.training for _, cell in model.cells_and_names())
