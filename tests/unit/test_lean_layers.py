"""The layers with hand-written backward passes (src/models/layers.py): RecomputedAttention, the attention core whose
backward recomputes the probabilities instead of keeping them, TanhGELU, and Dense's BiasAdd. Outputs and gradients
are checked against NumPy in float64 (the forward written from the published definition, the gradients by central
finite differences, so the oracle shares no derivation with the cells' bprop), and Attention through the core against
the plain autodiff path it replaces."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.models.layers import (Attention, Dense, EncoderBlock, RecomputedAttention, TanhGELU, activation_cell,
                               causal_bias, padding_bias)
from tests.helpers import block_gradients

B, H, L, S, D = 2, 2, 3, 4, 4   # batch, heads, queries, keys, head width
SCALE = 0.5
KEEP = 0.75


def numpy_context(q, k, v, bias, keep):
    scores = q @ k.swapaxes(-1, -2) * SCALE + bias
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if keep is not None:
        p = p * keep / KEEP
    return p @ v


def finite_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (f(up) - f(down)) / (2 * eps)
    return grad


class _WeightedSum(nn.Cell):
    """sum(cell(x) * weights): its gradient with respect to x and the cell's parameters is the cell's backward applied
    to `weights`."""

    def __init__(self, cell, weights):
        super().__init__()
        self.cell, self.weights = cell, ms.Tensor(weights.astype(np.float32))

    def construct(self, x):
        return (self.cell(x) * self.weights).sum()


class _Loss(nn.Cell):
    """sum(core(q, k, v, bias, keep) * weights): its gradient with respect to q, k, v is the cell's bprop."""

    def __init__(self, core, weights):
        super().__init__()
        self.core, self.weights = core, ms.Tensor(weights)

    def construct(self, q, k, v, bias, keep):
        return (self.core(q, k, v, bias, keep) * self.weights).sum()


@pytest.mark.parametrize("bias_kind", ["padding", "causal", "none"])
@pytest.mark.parametrize("dropout", [False, True])
def test_output_and_gradients_match_numpy(bias_kind, dropout):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, n, D)) for n in (L, S, S))
    weights = rng.standard_normal((B, H, L, D))
    if bias_kind == "padding":
        bias = padding_bias(ms.Tensor(np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32))).asnumpy()
    elif bias_kind == "causal":
        bias = causal_bias(S).asnumpy()[:, :, :L]
    else:
        bias = np.zeros((1, 1, 1, 1))
    keep = rng.random((B, H, L, S)) < KEEP if dropout else None
    core = RecomputedAttention(SCALE, KEEP if dropout else 1.0, biased=bias_kind != "none")
    keep_ms = ms.Tensor(keep if dropout else np.ones((1, 1, 1, 1), np.bool_))
    as_ms = [ms.Tensor(x.astype(np.float32)) for x in (q, k, v, bias)]

    out = core(*as_ms, keep_ms).asnumpy()
    np.testing.assert_allclose(out, numpy_context(q, k, v, bias, keep), rtol=1e-5, atol=1e-6)

    grads = ms.grad(_Loss(core, weights.astype(np.float32)), grad_position=(0, 1, 2))(*as_ms, keep_ms)
    inputs = [q, k, v]
    for i, grad in enumerate(grads):
        def loss(x, i=i):
            args = list(inputs)
            args[i] = x
            return (numpy_context(*args, bias, keep) * weights).sum()
        expected = finite_difference(loss, inputs[i])
        np.testing.assert_allclose(grad.asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_block_through_the_hand_written_backwards_equals_the_plain_path():
    """Attention through RecomputedAttention, Dense through BiasAdd and LayerNorm through the native backward against
    the primitives they replace: same output exactly, same parameter gradients to float tolerance, in a pre-LN block
    with padding."""
    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal((2, 5, 16)).astype(np.float32))
    mask = ms.Tensor(np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.float32))
    loss_plain, grads_plain = block_gradients(False, x, mask)
    loss_lean, grads_lean = block_gradients(True, x, mask)
    assert loss_lean == loss_plain
    assert len(grads_lean) == len(grads_plain) == 16
    for lean, plain in zip(grads_lean, grads_plain):
        np.testing.assert_allclose(lean, plain, rtol=1e-4, atol=1e-7)


def test_attention_dropout_in_training_uses_the_dropout_layers_mask(pynative):
    """With attention dropout in training, the mask comes from the layer's dropout kernel (the trainer's StepDropout
    replaces it) and drops what the plain path drops; in evaluation nothing is dropped."""
    attn = Attention(8, 2, dropout=0.5)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 4, 8)).astype(np.float32))
    attn.set_train(False)
    lean = attn(x).asnumpy()
    attn.lean_backward = False
    np.testing.assert_array_equal(attn(x).asnumpy(), lean)

    drawn = []
    pattern = ms.Tensor(np.random.default_rng(3).random((2, 2, 4, 4)) < 0.5)

    class Kernel(nn.Cell):
        """A dropout kernel with a fixed mask: (x * mask / keep_prob, mask), like StepDropout's."""

        def construct(self, scores):
            drawn.append(scores.shape)
            return scores * ops.cast(pattern, scores.dtype) / 0.5, pattern

    attn.dropout.dropout = Kernel()
    attn.set_train(True)
    plain = attn(x).asnumpy()
    attn.lean_backward = True
    np.testing.assert_allclose(attn(x).asnumpy(), plain, rtol=1e-6, atol=1e-7)
    assert drawn == [(2, 2, 4, 4), (2, 2, 4, 4)]
    assert np.abs(plain - lean).max() > 1e-3   # the mask did drop something


def numpy_tanh_gelu(x):
    """GELU's tanh approximation as Hendrycks & Gimpel publish it."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("training", [False, True])   # elementwise kernels; in training, src/native/tanh_gelu.cc
def test_tanh_gelu_matches_the_published_formula_and_its_derivative(training):
    x = np.random.default_rng(4).standard_normal((3, 7)) * 3.0
    x[0, :3] = (-40.0, 12.0, 0.0)   # the gate saturates (exp of about +-100 inside the sigmoid), and zero
    weights = np.random.default_rng(5).standard_normal((3, 7))
    gelu = TanhGELU()
    assert isinstance(activation_cell("gelu"), TanhGELU) and gelu.native is not None
    gelu.set_train(training)
    x_ms = ms.Tensor(x.astype(np.float32))
    np.testing.assert_allclose(gelu(x_ms).asnumpy(), numpy_tanh_gelu(x), rtol=1e-5, atol=1e-6)
    grad = ms.grad(_WeightedSum(gelu, weights))(x_ms).asnumpy()
    expected = finite_difference(lambda z: (numpy_tanh_gelu(z) * weights).sum(), x)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_native_tanh_gelu_on_two_threads_equals_the_elementwise_kernels():
    """On 300 x 1001 elements (two threads, an uneven split) the native forward and backward in training equal the
    elementwise path checked above."""
    x = ms.Tensor((np.random.default_rng(6).standard_normal((300, 1001)) * 3.0).astype(np.float32))
    weights = np.random.default_rng(7).standard_normal((300, 1001))
    native, elementwise = TanhGELU(), TanhGELU()
    native.set_train(True)
    results = [(cell(x).asnumpy(), ms.grad(_WeightedSum(cell, weights))(x).asnumpy()) for cell in (native, elementwise)]
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_step_dropout_draws_fresh_masks_per_step_and_salt_repeats_them_on_resume_and_routes_the_gradient():
    """The trainer's StepDropout (src/engine/trainer.py): keeps about keep_prob of the elements, a function of (salt,
    step, element) only, so another step or layer draws another mask and the same step draws the same one again
    (exact resume); its written-out backward is dout * mask / keep_prob."""
    from src.engine.trainer import StepDropout
    counter = ms.Parameter(ms.Tensor(np.array(0, np.int32)), name="dropout_step", requires_grad=False)
    keep = 0.9
    first, other_layer = StepDropout(keep, 12345, counter), StepDropout(keep, 777, counter)
    x = ms.Tensor(np.ones((4, 6, 50, 50), np.float32))
    mask = first.draw_mask(x.shape).asnumpy()
    assert mask.dtype == np.bool_ and abs(mask.mean() - keep) < 0.01          # 60,000 draws: sd 0.0012
    np.testing.assert_allclose(first(x)[0].asnumpy(), mask / keep, rtol=1e-6)
    assert (other_layer.draw_mask(x.shape).asnumpy() != mask).mean() > 0.1
    assert (other_layer(x)[0].asnumpy() != first(x)[0].asnumpy()).mean() > 0.1
    counter.set_data(ms.Tensor(np.array(1, np.int32)))
    assert (first.draw_mask(x.shape).asnumpy() != mask).mean() > 0.1
    assert (first(x)[0].asnumpy() != mask / keep).mean() > 0.1
    counter.set_data(ms.Tensor(np.array(0, np.int32)))
    np.testing.assert_array_equal(first.draw_mask(x.shape).asnumpy(), mask)   # the same step: the same mask
    np.testing.assert_allclose(first(x)[0].asnumpy(), mask / keep, rtol=1e-6)
    # neighbouring elements are not correlated (the hash mixes the index)
    flat = mask.reshape(-1).astype(np.float64)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.drop = first

        def construct(self, x, w):
            return (self.drop(x)[0] * w).sum()

    w = ms.Tensor(np.random.default_rng(6).standard_normal(x.shape).astype(np.float32))
    grad = ms.grad(Loss())(x, w).asnumpy()
    np.testing.assert_allclose(grad, w.asnumpy() * mask / keep, rtol=1e-6)


def test_step_dropout_pairs_of_rows_and_columns_drop_together_as_independent_draws_would():
    """The mask is built from one key per row and one per column (their wrapped product, by the CPU's int32 MatMul or
    elementwise elsewhere, the same mask), so the risk is rows (or columns) that drop in step with each other. Over
    600 rows x 400 columns at keep 0.8: the share of columns where two rows both drop has the mean p^2 and the spread
    of a binomial over 400 draws (p = 0.2), over all 179,700 row pairs; the same holds for column pairs; the overall
    keep rate is within 4 standard deviations."""
    from src.engine.trainer import StepDropout
    counter = ms.Parameter(ms.Tensor(np.array(5, np.int32)), name="dropout_step", requires_grad=False)
    keep, rows, columns = 0.8, 600, 400
    drop = 1.0 - StepDropout(keep, 4242, counter).draw_mask((2, 300, columns)).asnumpy().reshape(rows, columns)
    elementwise = StepDropout(keep, 4242, counter)   # the product other devices use: the same mask
    elementwise.outer_product_by_matmul = False
    np.testing.assert_array_equal(1.0 - elementwise.draw_mask((2, 300, columns)).asnumpy().reshape(rows, columns),
                                  drop)
    assert abs(drop.mean() - (1 - keep)) < 4 * np.sqrt(keep * (1 - keep) / drop.size)
    p2 = (1 - keep) ** 2
    for m in (drop, drop.T):
        n = m.shape[1]
        both = (m @ m.T / n)[np.triu_indices(m.shape[0], 1)]
        binomial_sd = np.sqrt(p2 * (1 - p2) / n)
        assert abs(both.mean() - p2) < 0.05 * p2
        assert abs(both.std() / binomial_sd - 1) < 0.05


def test_attention_takes_step_dropouts_mask_alone_in_graph_mode_and_drops_what_the_plain_path_drops():
    """In a training graph, Attention asks the trainer's StepDropout for the mask alone (draw_mask) instead of running
    it over a tensor of zeros; the lean path then drops exactly what the plain path (StepDropout over the
    probabilities) drops, and another step drops something else."""
    from src.engine.trainer import use_step_dropout
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 4, 8)).astype(np.float32))
    lean, plain = Attention(8, 2, dropout=0.5), Attention(8, 2, dropout=0.5)
    plain.lean_backward = False   # set before the first call: a compiled graph keeps the attributes it was built with
    for name, param in plain.parameters_and_names():
        param.set_data(lean.parameters_dict()[name].value())
    counters = [use_step_dropout([attn], seed=3, rank=0) for attn in (lean, plain)]
    outputs = []
    for attn in (lean, plain):
        attn.set_train(True)
        outputs.append(attn(x).asnumpy())
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-7)
    counters[0].set_data(ms.Tensor(np.array(1, np.int32)))
    assert np.abs(lean(x).asnumpy() - outputs[0]).max() > 1e-3
    lean.set_train(False)
    assert np.abs(lean(x).asnumpy() - outputs[0]).max() > 1e-3


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3)])
def test_dense_bias_gradient_is_the_row_sum(shape):
    """Dense's output is x W^T + b and its gradients are dout^T x, dout W and the sum of dout over every row (NumPy in
    float64), for 2-D and 3-D inputs; it keeps nn.Dense's parameter names."""
    rng = np.random.default_rng(4)
    layer = Dense(3, 2)
    assert [p.name for p in layer.get_parameters()] == ["weight", "bias"]
    w, b = layer.weight.asnumpy().astype(np.float64), rng.standard_normal(2)
    layer.bias.set_data(ms.Tensor(b.astype(np.float32)))
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(shape[:-1] + (2,))
    x_ms = ms.Tensor(x.astype(np.float32))
    np.testing.assert_allclose(layer(x_ms).asnumpy(), x @ w.T + b, rtol=1e-5, atol=1e-6)
    dx, (dw, db) = ms.value_and_grad(_WeightedSum(layer, dout), 0, layer.trainable_params())(x_ms)[1]
    rows, drows = x.reshape(-1, 3), dout.reshape(-1, 2)
    np.testing.assert_allclose(db.asnumpy(), drows.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw.asnumpy(), drows.T @ rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx.asnumpy(), dout @ w, rtol=1e-5, atol=1e-6)


def test_every_dropout_call_site_of_a_block_has_its_own_step_dropout():
    """StepDropout draws one mask per (layer, step), so a dropout layer called twice in a forward pass would drop the
    same elements of both residual branches. Each call site of the encoder and decoder blocks (attention
    probabilities, each residual branch, the feed-forward's inner activation) has its own layer and salt."""
    from src.engine.trainer import StepDropout, use_step_dropout
    from src.models.layers import DecoderBlock

    for block, sites in ((EncoderBlock(8, 2, 16, dropout=0.1, attention_dropout=0.1), 4),
                         (DecoderBlock(8, 2, 16, dropout=0.1, attention_dropout=0.1), 6)):
        assert use_step_dropout([block], seed=1, rank=0) is not None
        kernels = [cell for _, cell in block.cells_and_names() if isinstance(cell, StepDropout)]
        assert len(kernels) == sites
        assert len({kernel.salt for kernel in kernels}) == sites
