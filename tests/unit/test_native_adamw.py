"""The native AdamW kernel (optim.kernel: native; src/native/adamw.cc) against a NumPy reference of the update
MindSpore's AdamWeightDecay documents (no bias correction, decay added to the Adam direction), through TrainStep in
GRAPH_MODE with clipping and accumulation folded into its gradient factor; against MindSpore's own kernel; and the
kernel choice: fallbacks, refusals and build errors."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from src.native import kernels as native_kernels
from src.engine.optim import NativeAdamWeightDecay, apply_lr, build_optimizer, choose_kernel
from src.engine.train_step import LossScale, TrainStep
from src.errors import UserError
from tests.helpers import model_config

# a matrix of an odd size larger than two threads' minimum share (so the threads split it at a non-aligned end) and
# a vector (the no-decay group); the loss is linear, so each gradient is known exactly: the batch mean of its input
SHAPES = {"layer.weight": (3, 100_003), "layer.bias": (37,)}
CLIP = 2.0
ACCUMULATION = 2
BATCH = 4


class Linear(nn.Cell):
    """loss = batch mean of sum(weight * x) + sum(bias * y): d loss / d weight = mean(x), d loss / d bias = mean(y)."""

    def __init__(self, seed):
        super().__init__(auto_prefix=False)
        rng = np.random.default_rng(seed)
        self.weight = Parameter(Tensor(rng.standard_normal(SHAPES["layer.weight"]).astype(np.float32)),
                                name="layer.weight")
        self.bias = Parameter(Tensor(rng.standard_normal(SHAPES["layer.bias"]).astype(np.float32)), name="layer.bias")

    def construct(self, x, y):
        return ((self.weight * x).sum() + (self.bias * y).sum()) / x.shape[0]


def optim_cfg(kernel, **updates):
    cfg = model_config("tiny", [f"optim.kernel={kernel}", "optim.lr=0.01", "optim.end_lr=0.001",
                                "optim.warmup_steps=3", "optim.weight_decay=0.1", "optim.no_decay=[]"])
    return cfg.with_updates({f"optim.{k}": v for k, v in updates.items()}).optim


def numpy_adamw(var, m, v, grad, lr, beta1, beta2, eps, decay):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return var - lr * (m / (np.sqrt(v) + eps) + decay * var), m, v


def batches(steps):
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((BATCH, *SHAPES["layer.weight"])).astype(np.float32),
             rng.standard_normal((BATCH, *SHAPES["layer.bias"])).astype(np.float32)) for _ in range(steps)]


def train(kernel, data):
    """Parameters and moments after TrainStep (clip CLIP, accumulation ACCUMULATION) over `data`, one step each."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = Linear(seed=3)
    optimizer = build_optimizer(net.trainable_params(), optim_cfg(kernel), total_steps=len(data))
    step = TrainStep(net, optimizer, LossScale("none"), clip_norm=CLIP, accumulation=ACCUMULATION)
    lrs, norms = [], []
    for x, y in data:
        lrs.append(apply_lr(optimizer))
        _, finite, _, norm = step(Tensor(x), Tensor(y))
        assert bool(finite.asnumpy())
        norms.append(float(norm.asnumpy()))
    state = {p.name: p.asnumpy() for p in optimizer.parameters}
    state.update({p.name: p.asnumpy() for p in (*optimizer.moments1, *optimizer.moments2, optimizer.global_step)})
    return optimizer, state, lrs, norms


@pytest.fixture(scope="module")
def runs():
    data = batches(3)
    return data, {kernel: train(kernel, data) for kernel in ("native", "mindspore")}


def test_native_train_step_equals_numpy_adamw_with_clipping_and_accumulation(runs):
    data, results = runs
    optimizer, state, lrs, norms = results["native"]
    assert isinstance(optimizer, NativeAdamWeightDecay) and optimizer.kernel_choice[0] == "native"
    cfg = optim_cfg("native")
    start = Linear(seed=3)
    var = {p.name: p.asnumpy().astype(np.float64) for p in start.trainable_params()}
    m = {k: np.zeros_like(a) for k, a in var.items()}
    v = {k: np.zeros_like(a) for k, a in var.items()}
    decay = {"layer.weight": cfg.weight_decay, "layer.bias": 0.0}   # vectors never decay (split_decay)
    for (x, y), lr, norm in zip(data, lrs, norms):
        grads = {"layer.weight": x.astype(np.float64).mean(0), "layer.bias": y.astype(np.float64).mean(0)}
        raw_norm = np.sqrt(sum(np.square(g).sum() for g in grads.values()))
        assert norm == pytest.approx(raw_norm, rel=1e-5)
        assert raw_norm > CLIP   # clipping is active: the factor the kernel applies is not 1
        for name, g in grads.items():
            var[name], m[name], v[name] = numpy_adamw(var[name], m[name], v[name], g * CLIP / raw_norm, lr,
                                                      cfg.beta1, cfg.beta2, cfg.eps, decay[name])
    assert len(set(lrs)) == 3
    for name in SHAPES:
        np.testing.assert_allclose(state[name], var[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state[f"adam_m.{name}"], m[name], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(state[f"adam_v.{name}"], v[name], rtol=1e-5, atol=1e-10)
    assert int(state["global_step"].reshape(-1)[0]) == 3


def test_native_and_mindspore_kernels_hold_the_same_state_and_agree(runs):
    """Same parameter names (a checkpoint of one resumes the other) and the same values to float32 rounding."""
    _, results = runs
    native, reference = results["native"][1], results["mindspore"][1]
    assert sorted(native) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(native[name], value, rtol=2e-5, atol=1e-6, err_msg=name)


def test_uneven_thread_split_and_small_tensors(pynative):
    """Three threads over a size that is not a multiple of the 16-float chunk alignment, one tensor below the
    per-thread minimum: every element updated exactly once (PyNative, gradient factor 0.5, zero moments)."""
    rng = np.random.default_rng(0)
    big = Parameter(Tensor(rng.standard_normal(200_017).astype(np.float32)), name="big")
    small = Parameter(Tensor(rng.standard_normal((5, 3)).astype(np.float32)), name="small")
    start = [big.asnumpy().astype(np.float64), small.asnumpy().astype(np.float64)]
    optimizer = NativeAdamWeightDecay([big, small], learning_rate=0.1, beta1=0.9, beta2=0.99, eps=1e-6, threads=3)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in (big, small)]
    optimizer(tuple(Tensor(g) for g in grads), Tensor(np.float32(0.5)))
    for param, value, g in zip((big, small), start, grads):
        expected, _, _ = numpy_adamw(value, 0.0, 0.0, 0.5 * g.astype(np.float64), 0.1, 0.9, 0.99, 1e-6, 0.0)
        np.testing.assert_allclose(param.asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_kernel_choice_by_device_and_setting():
    assert choose_kernel("mindspore", "CPU")[0] == "mindspore"
    assert choose_kernel("auto", "CPU")[0] == "native"
    assert choose_kernel("auto", "Ascend") == ("mindspore", "the native kernel is CPU-only (device Ascend)")
    with pytest.raises(UserError, match="optim.kernel: native runs on CPU only"):
        choose_kernel("native", "GPU")
    with pytest.raises(UserError, match="optim.kernel must be one of auto, native, mindspore"):
        choose_kernel("fused", "CPU")


@pytest.fixture
def no_cached_build(tmp_path, monkeypatch):
    """An empty kernel cache and a fresh build on the next native_library call."""
    monkeypatch.setenv("OPT_NATIVE_CACHE", str(tmp_path / "cache"))
    native_kernels.native_library.cache_clear()
    native_kernels._warn_once.cache_clear()   # each test sees its own warning
    yield tmp_path / "cache"
    native_kernels.native_library.cache_clear()


def test_without_a_compiler_auto_falls_back_and_native_is_refused(no_cached_build, monkeypatch, caplog):
    monkeypatch.setattr(native_kernels, "find_compiler", lambda: None)
    kernel, reason = choose_kernel("auto", "CPU")
    assert kernel == "mindspore" and "no C++ compiler found" in reason
    assert "could not be built" in caplog.text
    with pytest.raises(UserError, match="no C\\+\\+ compiler found.*optim.kernel: mindspore"):
        choose_kernel("native", "CPU")
    optimizer = build_optimizer([Parameter(Tensor(np.ones((2, 2), np.float32)), name="w")], optim_cfg("auto"), 10)
    assert type(optimizer) is nn.AdamWeightDecay and optimizer.kernel_choice[0] == "mindspore"


def test_a_failing_compiler_is_reported_with_its_message(no_cached_build, tmp_path, monkeypatch):
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'adamw.cc:1: error: something broke' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(UserError, match="cxx failed on .*adamw.cc \\(exit 1\\): adamw.cc:1: error: something broke"):
        choose_kernel("native", "CPU")
    assert not [f for f in os.listdir(no_cached_build) if f.endswith(".so")]   # no half-written library is left


def test_an_unwritable_cache_is_a_build_error_naming_the_folder(no_cached_build, monkeypatch):
    no_cached_build.parent.mkdir(exist_ok=True)
    no_cached_build.write_text("a file where the folder should be")
    with pytest.raises(UserError, match=f"cannot write the kernel cache {no_cached_build} .*OPT_NATIVE_CACHE"):
        choose_kernel("native", "CPU")


def test_the_build_is_cached_by_source_and_machine(no_cached_build):
    first = native_kernels.native_library("adamw")
    assert os.path.dirname(first) == str(no_cached_build) and os.path.isfile(first)
    native_kernels.native_library.cache_clear()
    assert native_kernels.native_library("adamw") == first
    assert os.listdir(no_cached_build) == [os.path.basename(first)]
