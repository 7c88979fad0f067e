"""The native attention softmax (src/native/attention_softmax.cc through src.models.layers.NativeAttentionCore) and
the keyed dropout (src/native/keyed_dropout.cc through src.engine.trainer.StepDropout).

The oracle is attention written from its definition in float64 NumPy, softmax(q k^T * scale + bias) * mask / keep @ v,
with the mask formed from the keys by the formula StepDropout documents (the wrapped uint32 product of a row's and a
column's key, read as int32, below the threshold); its gradient is written out and checked against central finite
differences, so the kernels are not checked against a derivation they share. Shapes split unevenly over two threads
and have key counts that are not multiples of the kernels' 16 lanes."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.engine.trainer import StepDropout
from src.models.layers import Attention, NativeAttentionCore, padding_bias
from src.native import kernels
from tests.helpers import block_gradients

SCALE = 0.35
KEEP = 0.75
THRESHOLD = int(round(KEEP * 2.0 ** 32)) - 2 ** 31


def keyed_mask(row_keys, column_keys, threshold=THRESHOLD):
    """Element (r, c) kept when int32(uint32(row_key) * uint32(column_key)) < threshold."""
    product = row_keys.astype(np.uint32)[:, None] * column_keys.astype(np.uint32)[None, :]
    return product.view(np.int32) < threshold


def numpy_attention(q, k, v, bias, factor):
    """Output and probabilities of softmax(q k^T * SCALE + bias) * factor @ v (factor = mask / keep, or 1)."""
    scores = q @ k.swapaxes(-1, -2) * SCALE + bias
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p * factor) @ v, p


def numpy_attention_grads(q, k, v, bias, factor, dout):
    """Gradients of sum(dout * output) with respect to q, k, v."""
    _, p = numpy_attention(q, k, v, bias, factor)
    used = p * factor
    dv = used.swapaxes(-1, -2) @ dout
    dp = dout @ v.swapaxes(-1, -2) * factor
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * SCALE
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def test_the_reference_gradient_is_the_finite_difference_of_attention():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, n, 3)) for n in (2, 4, 4))
    bias = rng.standard_normal((1, 1, 1, 4))
    factor = (rng.random((1, 2, 2, 4)) < KEEP) / KEEP
    dout = rng.standard_normal((1, 2, 2, 3))
    grads = numpy_attention_grads(q, k, v, bias, factor, dout)
    inputs = [q, k, v]
    step = 1e-6
    for i, grad in enumerate(grads):
        for index in np.ndindex(inputs[i].shape):
            up, down = [x.copy() for x in inputs], [x.copy() for x in inputs]
            up[i][index] += step
            down[i][index] -= step
            change = ((numpy_attention(*up, bias, factor)[0] - numpy_attention(*down, bias, factor)[0]) * dout).sum()
            assert grad[index] == pytest.approx(change / (2 * step), rel=1e-5, abs=1e-8)


class _Loss(nn.Cell):
    def __init__(self, core, weights):
        super().__init__()
        self.core, self.weights = core, ms.Tensor(weights.astype(np.float32))

    def construct(self, q, k, v, bias, row_keys, column_keys, threshold):
        return (self.core(q, k, v, bias, row_keys, column_keys, threshold) * self.weights).sum()


def _odd_keys(rng, n):
    return (rng.integers(-2 ** 31, 2 ** 31, n, dtype=np.int64) | 1).astype(np.int32)


@pytest.mark.parametrize("shape,bias_kind,dropout", [
    ((2, 3, 150, 231), "padding", True),     # 900 rows of 231 keys: two threads, uneven split; padded keys
    ((2, 3, 150, 231), "none", False),
    ((1, 2, 5, 7), "causal", True),          # one thread; a (1, 1, Lq, Lk) bias
    ((2, 2, 3, 19), "per_query", False),     # a (B, 1, Lq, 1) bias: one constant per row
])
def test_native_core_equals_attention_and_its_gradient(shape, bias_kind, dropout):
    rng = np.random.default_rng(1)
    b, h, lq, lk = shape
    q, k, v = (rng.standard_normal((b, h, n, 16)) for n in (lq, lk, lk))
    if bias_kind == "padding":
        lengths = np.array([lk - 40, lk])
        bias = padding_bias(ms.Tensor((np.arange(lk)[None] < lengths[:, None]).astype(np.float32))).asnumpy()
    elif bias_kind == "causal":
        bias = np.triu(np.full((lq, lk), -1e4), 1)[None, None]
    elif bias_kind == "per_query":
        bias = rng.standard_normal((b, 1, lq, 1))
    else:
        bias = np.zeros((1, 1, 1, 1))
    if dropout:
        row_keys, column_keys = _odd_keys(rng, b * h * lq), _odd_keys(rng, lk)
        factor = keyed_mask(row_keys, column_keys).reshape(shape) / np.float32(KEEP)
        core = NativeAttentionCore(SCALE, KEEP)
    else:
        row_keys = column_keys = np.ones(1, np.int32)
        factor = np.ones(shape)
        core = NativeAttentionCore(SCALE)
    args = [ms.Tensor(x.astype(np.float32)) for x in (q, k, v, bias)]
    args += [ms.Tensor(row_keys), ms.Tensor(column_keys), ms.Tensor(np.array([THRESHOLD], np.int32))]
    expected, _ = numpy_attention(q, k, v, bias, factor)
    np.testing.assert_allclose(core(*args).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    if dropout:
        assert 0.7 < (factor > 0).mean() < 0.8

    dout = rng.standard_normal(expected.shape)
    grads = ms.grad(_Loss(core, dout), grad_position=(0, 1, 2))(*args)
    for got, want in zip(grads, numpy_attention_grads(q, k, v, bias, factor, dout)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=1e-4)
    if bias_kind == "padding":   # a padded key gets a probability of exactly 0: its value never reaches the output
        changed = v.copy()
        changed[0, :, lengths[0]:] += 100.0
        args[2] = ms.Tensor(changed.astype(np.float32))
        np.testing.assert_array_equal(core(*args).asnumpy()[0], core(*args[:2], ms.Tensor(v.astype(np.float32)),
                                                                     *args[3:]).asnumpy()[0])


def test_keyed_dropout_applies_the_documented_mask_on_two_threads_and_routes_the_gradient():
    """StepDropout's native kernel against x * mask / keep with the mask formed in NumPy from StepDropout's own keys,
    on a tensor two threads share (384 rows of 769)."""
    counter = ms.Parameter(ms.Tensor(np.array(3, np.int32)), name="dropout_step", requires_grad=False)
    drop = StepDropout(0.9, 2024, counter)
    assert drop.keyed_dropout is not None
    x = np.random.default_rng(2).standard_normal((2, 192, 769)).astype(np.float32)
    row_keys, column_keys, threshold = (t.asnumpy() for t in drop.mask_keys(x.shape))
    mask = keyed_mask(row_keys, column_keys, threshold[0]).reshape(x.shape)
    np.testing.assert_array_equal(drop.draw_mask(x.shape).asnumpy(), mask)
    np.testing.assert_array_equal(drop(ms.Tensor(x))[0].asnumpy(), np.where(mask, x * np.float32(1.0 / 0.9), 0.0))

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(p=0.1)
            self.drop.dropout = drop

        def construct(self, x, w):
            return (self.drop(x) * w).sum()

    loss = Loss()
    loss.set_train(True)
    w = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    grad = ms.grad(loss)(ms.Tensor(x), ms.Tensor(w)).asnumpy()
    np.testing.assert_array_equal(grad, np.where(mask, w * np.float32(1.0 / 0.9), 0.0))


def test_training_block_through_the_native_core_equals_mindspore_s_kernels():
    """A pre-LN block in training (no dropout) with padding: through the native core against RecomputedAttention."""
    rng = np.random.default_rng(4)
    x = ms.Tensor(rng.standard_normal((2, 9, 32)).astype(np.float32))
    mask = ms.Tensor(np.array([[1] * 9, [1] * 6 + [0] * 3], np.float32))
    loss_native, grads_native = block_gradients(True, x, mask, width=32, training=True)
    loss_plain, grads_plain = block_gradients(True, x, mask, width=32, training=True, native_attention=False)
    np.testing.assert_allclose(loss_native, loss_plain, rtol=1e-6)
    for native, plain in zip(grads_native, grads_plain):
        np.testing.assert_allclose(native, plain, rtol=1e-4, atol=1e-6)


def test_evaluation_and_exported_graphs_keep_mindspore_s_kernels(tmp_path):
    """Outside training the native kernels never run, so an exported MindIR holds no Custom op tied to this machine's
    library."""
    attn = Attention(8, 2)
    attn.set_train(False)
    x = ms.Tensor(np.random.default_rng(5).standard_normal((1, 3, 8)).astype(np.float32))
    ms.export(attn, x, file_name=str(tmp_path / "attention"), file_format="MINDIR")
    exported = (tmp_path / "attention.mindir").read_bytes()
    assert b"MatMul" in exported and b"AttentionSoftmax" not in exported and b"Custom" not in exported


def test_without_the_native_kernels_attention_and_dropout_keep_mindspore_s_kernels(monkeypatch, tmp_path):
    monkeypatch.setenv("OPT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "find_compiler", lambda: None)
    kernels.native_library.cache_clear()
    kernels._warn_once.cache_clear()
    try:
        attn = Attention(8, 2, dropout=0.1)
        counter = ms.Parameter(ms.Tensor(np.array(0, np.int32)), name="dropout_step", requires_grad=False)
        drop = StepDropout(0.9, 1, counter)
    finally:
        kernels.native_library.cache_clear()
    assert attn.native_core is None and attn.native_dropped_core is None and drop.keyed_dropout is None
    out, mask = drop(ms.Tensor(np.ones((4, 8), np.float32)))
    np.testing.assert_array_equal(mask.asnumpy(), drop.draw_mask((4, 8)).asnumpy())
    np.testing.assert_allclose(out.asnumpy(), mask.asnumpy() / 0.9, rtol=1e-6)
