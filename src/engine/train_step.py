"""The training step, one GRAPH_MODE Cell: forward + backward, data-parallel gradient averaging, dynamic loss scaling
with overflow skipping, global-norm clipping, gradient accumulation and the optimizer update.

Gradient accumulation splits the incoming batch into `accumulation` equal micro-batches inside the step and averages
their gradients before one optimizer update, so a step with accumulation k over a batch of k*B samples equals a plain
step over the same k*B samples (to float tolerance) while holding the activations of only B samples at a time.

Loss scaling works on every backend: a step overflows when the global norm of the unscaled gradients is not finite
(an inf or NaN in any gradient makes it inf or NaN; the Ascend-only float-status ops are not used), so the norm that
clipping needs is the only full pass over the gradients before the update. Unscaling (1 / (scale * k)) and clipping
then multiply the gradients once, together: inside the update when the optimizer takes the factor
(src.engine.optim.NativeAdamWeightDecay), else as a pass of its own. On overflow the update is skipped and the
scale is divided by `factor`; after `window` finite steps it is multiplied by `factor`. The scale and its counter are
Parameters, so they are saved in checkpoints and restored on resume. With loss scaling off and no accumulation the
gradients are used as they come (no multiply by 1).
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops


class LossScale(nn.Cell):
    """Loss-scale state shared by the train steps of all tasks. mode: none | fixed | dynamic."""

    def __init__(self, mode="none", init=65536.0, factor=2.0, window=1000):
        super().__init__()
        if mode not in ("none", "fixed", "dynamic"):
            raise ValueError(f"train.loss_scale must be none, fixed or dynamic, got {mode!r}")
        self.mode, self.factor, self.window = mode, float(factor), int(window)
        start = 1.0 if mode == "none" else float(init)
        self.scale = Parameter(ms.Tensor(np.array(start, np.float32)), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(ms.Tensor(np.array(0, np.int32)), name="loss_scale_good_steps",
                                    requires_grad=False)

    def update(self, finite):
        """Adjust the scale after a step (grow after `window` finite steps, shrink on overflow)."""
        if self.mode != "dynamic":
            return self.scale
        if finite:
            grown = self.good_steps + 1 >= self.window
            new_scale = ops.select(grown, self.scale * self.factor, self.scale)
            ops.assign(self.good_steps, ops.select(grown, ops.zeros_like(self.good_steps), self.good_steps + 1))
        else:
            new_scale = ops.maximum(self.scale / self.factor, 1.0)
            ops.assign(self.good_steps, ops.zeros_like(self.good_steps))
        ops.assign(self.scale, new_scale)
        return self.scale


_scale_grad = ops.MultitypeFuncGraph("scale_grad")
_square_sum = ops.MultitypeFuncGraph("square_sum")
_add = ops.MultitypeFuncGraph("add")
_row_times_row = ops.MatMul(transpose_b=True)


@_scale_grad.register("Tensor", "Tensor")
def _scale_one(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


@_square_sum.register("Tensor")
def _square_sum_one(grad):
    """sum(grad ** 2) as one (1, n) x (n, 1) MatMul: reads the gradient once and writes no squared copy (about twice
    as fast on CPU as reduce_sum(square(grad)) over hundreds of gradients)."""
    flat = ops.reshape(ops.cast(grad, ms.float32), (1, -1))
    return ops.reshape(_row_times_row(flat, flat), ())


@_add.register("Tensor", "Tensor")
def _add_one(a, b):
    return a + b


class ScaledLoss(nn.Cell):
    """loss_net's loss times the current loss scale (what the backward pass differentiates)."""

    def __init__(self, loss_net, loss_scale):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.loss_scale = loss_scale

    def construct(self, *inputs):
        return self.loss_net(*inputs) * self.loss_scale.scale


class TrainStep(nn.Cell):
    """`loss_net(*inputs) -> scalar loss`; each call returns (loss, finite, loss_scale, grad_norm).

    Every input's first axis is the batch; with `accumulation` k the batch must be divisible by k. Inputs that
    `loss_net.whole_batch_inputs` names (among its `input_names`) reach every micro-batch whole: a pool the
    micro-batch's rows index into (the matching task's images and audio); the first input is always split. Gradient
    transforms use HyperMap (a Python comprehension over hundreds of gradients makes graph compilation ~10x slower).
    """

    def __init__(self, loss_net, optimizer, loss_scale, clip_norm=1.0, accumulation=1):
        super().__init__(auto_prefix=False)
        self.network = loss_net  # a child Cell, so that set_train on the step reaches the model's dropout
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.clip_norm = float(clip_norm)
        self.accumulation = int(accumulation)
        whole = getattr(loss_net, "whole_batch_inputs", ())
        self.split = tuple(name not in whole for name in loss_net.input_names) if whole else None
        self.rescale = loss_scale.mode != "none" or self.accumulation > 1  # gradients need a 1 / (scale * k)
        differentiated = ScaledLoss(loss_net, loss_scale) if loss_scale.mode != "none" else loss_net
        self.grad_fn = ms.value_and_grad(differentiated, None, optimizer.parameters)
        self.hyper_map = ops.HyperMap()
        self.factor_in_update = getattr(optimizer, "takes_grad_factor", False)
        self.distributed = ms.get_auto_parallel_context("parallel_mode") in ("data_parallel", "hybrid_parallel")
        self.reducer = nn.Identity()
        if self.distributed:
            from mindspore.communication import get_group_size
            self.reducer = nn.DistributedGradReducer(optimizer.parameters, True, get_group_size())

    def micro_batch(self, inputs, i):
        size = inputs[0].shape[0] // self.accumulation
        if self.split is None:
            return tuple(x[i * size:(i + 1) * size] for x in inputs)
        return tuple(x[i * size:(i + 1) * size] if split else x for x, split in zip(inputs, self.split))

    def construct(self, *inputs):
        scale = self.loss_scale.scale * 1.0  # a copy: ops.identity(Parameter) would return the updated value
        if self.accumulation == 1:
            loss, grads = self.grad_fn(*inputs)
        else:
            loss, grads = self.grad_fn(*self.micro_batch(inputs, 0))
            for i in range(1, self.accumulation):
                # the next micro-batch starts after this one's gradients exist, so its activations are freed first
                # (without the dependency the graph may run the forward passes together: k times the memory)
                part = ops.depend(self.micro_batch(inputs, i), grads)
                part_loss, part_grads = self.grad_fn(*part)
                loss = loss + part_loss
                grads = self.hyper_map(_add, grads, part_grads)
        grads = self.reducer(grads)
        # the norm of the gradients as they came; unscaled (1 / (scale * k)) and clipped in one pass below
        grad_norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        inverse = 1.0 / (scale * self.accumulation)
        if self.rescale:
            loss, grad_norm = loss * inverse, grad_norm * inverse
        finite = ops.isfinite(grad_norm)
        factor = None
        if self.clip_norm > 0:
            factor = self.clip_norm / ops.maximum(grad_norm, self.clip_norm)
            if self.rescale:
                factor = factor * inverse
        elif self.rescale:
            factor = inverse
        self.loss_scale.update(finite)
        if finite:
            if self.factor_in_update:  # the optimizer's kernel multiplies each gradient as it reads it
                self.optimizer(grads, 1.0 if factor is None else factor)
            else:
                self.optimizer(grads if factor is None else self.hyper_map(ops.partial(_scale_grad, factor), grads))
        return loss, finite, scale, grad_norm
