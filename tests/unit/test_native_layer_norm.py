"""LayerNorm's native backward (src/native/layer_norm_grad.cc through src.models.layers.LayerNorm) against the
LayerNorm gradient written out in NumPy from its definition (float64) and against finite differences, on shapes that
split unevenly over threads and a width that is not a multiple of the kernel's 8 lanes; and the fallback."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.models.layers import LayerNorm, NativeLayerNormCore
from src.native import kernels

EPS = 1e-5


def numpy_layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def numpy_layer_norm_grad(x, gamma, dy):
    """d/dx, d/dgamma, d/dbeta of sum(dy * layer_norm(x)), from y = xhat * gamma + beta, xhat = (x - mean) * rstd."""
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + EPS)
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    rows = dy.reshape(-1, dy.shape[-1])
    return dx, (rows * xhat.reshape(rows.shape)).sum(0), rows.sum(0)


class Weighted(nn.Cell):
    def __init__(self, norm, weights):
        super().__init__()
        self.norm, self.weights = norm, ms.Tensor(weights)

    def construct(self, x):
        return (self.norm(x) * self.weights).sum()


def gradients(norm, x, dy):
    net = Weighted(norm, dy.astype(np.float32))
    grad_fn = ms.grad(net, grad_position=0, weights=net.trainable_params())
    dx, (dgamma, dbeta) = grad_fn(ms.Tensor(x.astype(np.float32)))
    return dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy()


@pytest.mark.parametrize("shape", [(3, 1700, 77), (2, 5, 13)])   # two threads over 5,100 rows; one thread
def test_native_backward_equals_the_layer_norm_gradient(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3.0 + 1.5
    dy = rng.standard_normal(shape)
    norm = LayerNorm(shape[-1], EPS)
    assert norm.lean_backward and isinstance(norm.native_core, NativeLayerNormCore)
    gamma = rng.standard_normal(shape[-1]).astype(np.float32)
    beta = rng.standard_normal(shape[-1]).astype(np.float32)
    norm.gamma.set_data(ms.Tensor(gamma))
    norm.beta.set_data(ms.Tensor(beta))
    np.testing.assert_allclose(norm(ms.Tensor(x.astype(np.float32))).asnumpy(), numpy_layer_norm(x, gamma, beta),
                               rtol=1e-4, atol=1e-5)
    for got, expected in zip(gradients(norm, x, dy), numpy_layer_norm_grad(x, gamma.astype(np.float64), dy)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_the_reference_gradient_is_the_finite_difference_of_layer_norm():
    """The NumPy gradient above is checked against the definition itself, so the kernel is not checked against a
    formula that shares its mistakes."""
    rng = np.random.default_rng(1)
    x, dy, gamma = rng.standard_normal((2, 6)), rng.standard_normal((2, 6)), rng.standard_normal(6)
    dx, dgamma, _ = numpy_layer_norm_grad(x, gamma, dy)
    step = 1e-6
    for index in np.ndindex(x.shape):
        shifted = x.copy()
        shifted[index] += step
        change = ((numpy_layer_norm(shifted, gamma, 0) - numpy_layer_norm(x, gamma, 0)) * dy).sum() / step
        assert dx[index] == pytest.approx(change, rel=1e-4, abs=1e-6)
    for i in range(6):
        shifted = gamma.copy()
        shifted[i] += step
        change = ((numpy_layer_norm(x, shifted, 0) - numpy_layer_norm(x, gamma, 0)) * dy).sum() / step
        assert dgamma[i] == pytest.approx(change, rel=1e-4, abs=1e-6)


def test_without_the_native_kernel_layer_norm_keeps_mindspore_s_backward(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("OPT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "find_compiler", lambda: None)
    kernels.native_library.cache_clear()
    kernels._warn_once.cache_clear()
    try:
        norm = LayerNorm(8, EPS)
    finally:
        kernels.native_library.cache_clear()
    assert not norm.lean_backward and norm.native_core is None
    assert "native kernel layer_norm_grad not built" in caplog.text and "no C++ compiler found" in caplog.text
    x = np.random.default_rng(2).standard_normal((4, 8))
    np.testing.assert_allclose(gradients(norm, x, np.ones((4, 8)))[0], 0.0, atol=1e-5)  # sum of a LayerNorm: dx = 0
