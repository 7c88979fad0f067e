"""Optimizer and learning-rate schedule.

AdamWeightDecay with two parameter groups: weight decay for matrices, none for vectors and scalars (biases, every
LayerNorm's gamma and beta, the temperature) and for parameters whose name contains one of `optim.no_decay`
(embeddings and special tokens by default). The learning rate is data, not part of the graph: the optimizer holds
it in a scalar float32 Parameter (LR_PARAM) that `apply_lr` sets on the host before every step to `lr_at` (linear
warm-up, then cosine / linear decay or constant) at the optimizer's own `global_step` (the number of updates applied;
a step skipped for a non-finite gradient does not advance it). Restoring the optimizer's state therefore restores the
position in the schedule, and neither `train.steps` nor the `optim.lr*` settings change the compiled graphs.

`optim.kernel` picks the update kernel. `native` (and `auto` on CPU, when a C++ compiler is there) is
NativeAdamWeightDecay: the same update, state and parameter names as MindSpore's AdamWeightDecay, run by our own
multi-threaded kernel (src/native/adamw.cc) that also takes the gradient factor (clipping and unscaling), so
the train step makes no scaled copy of the gradients. `mindspore` (and `auto` elsewhere) is nn.AdamWeightDecay.
"""
import functools
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from src.errors import UserError

OPTIMIZER_KERNELS = ("auto", "native", "mindspore")


def lr_at(step, base_lr, end_lr, warmup_steps, total_steps, schedule="cosine"):
    """Learning rate for 0-based `step`: linear warm-up from base_lr/warmup to base_lr over `warmup_steps`, then decay
    to `end_lr` at `total_steps` (cosine or linear), or stay at base_lr (constant)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "cosine":
        return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr + (end_lr - base_lr) * progress
    raise ValueError(f"optim.schedule must be cosine, linear or constant, got {schedule!r}")


# Name MindSpore's Optimizer gives the scalar Parameter it builds from a float learning rate; it is derived from
# global_step, so training checkpoints neither save nor load it (checkpoints of older versions held a whole table here)
LR_PARAM = "learning_rate"


def split_decay(params, no_decay_keywords):
    """(decay, no_decay) parameter lists. No decay for vectors and scalars (LayerNorms are named ln1, final_norm,
    proj_norm, ..., so names alone miss them) and for names containing a keyword (case-insensitive substring)."""
    keys = [k.lower() for k in no_decay_keywords]
    decay, no_decay = [], []
    for p in params:
        exempt = len(p.shape) <= 1 or any(k in p.name.lower() for k in keys)
        (no_decay if exempt else decay).append(p)
    return decay, no_decay


def select_trainable(params, freeze):
    """The parameters the optimizer updates: `params` without those whose name starts with one of the prefixes in
    `freeze` (train.freeze; a prefix is a whole name component: `text_encoder` freezes `text_encoder.*`). A frozen
    parameter gets no gradient and keeps its loaded value. A prefix that matches nothing is an error (a typo would
    otherwise train everything), and so is freezing every parameter."""
    params = list(params)
    if not freeze:
        return params
    def frozen_by(prefix, name):
        return name == prefix or name.startswith(prefix.rstrip(".") + ".")
    unmatched = [f for f in freeze if not any(frozen_by(f, p.name) for p in params)]
    if unmatched:
        roots = sorted({p.name.split(".")[0] for p in params})
        raise UserError(f"train.freeze: {', '.join(map(repr, unmatched))} matches no parameter of the model; "
                        f"give name prefixes such as {', '.join(roots)} (or a deeper one, e.g. text_encoder.encoder)")
    kept = [p for p in params if not any(frozen_by(f, p.name) for f in freeze)]
    if not kept:
        raise UserError(f"train.freeze: {list(freeze)} freezes every parameter, so there is nothing to train")
    return kept


class NativeAdamWeightDecay(nn.AdamWeightDecay):
    """nn.AdamWeightDecay (same state, names and update) whose step runs src/native/adamw.cc on every
    parameter: `optimizer(gradients, grad_factor)` updates with gradients * grad_factor without making that product,
    on `threads` threads."""

    takes_grad_factor = True

    def __init__(self, params, learning_rate, beta1, beta2, eps, threads):
        super().__init__(params, learning_rate=learning_rate, beta1=beta1, beta2=beta2, eps=eps)
        from src.native.kernels import adamw_in_place_op
        self.update_op = adamw_in_place_op()
        decay = self.get_weight_decay()   # a tensor per parameter with groups, else one for all
        per_param = decay if self.is_group else (decay,) * len(self._parameters)
        decays = [float(d.asnumpy()) if flag else 0.0 for d, flag in zip(per_param, self.decay_flags)]
        fixed = {d: ms.Tensor(np.array([beta1, beta2, eps, d, threads], np.float32)) for d in set(decays)}
        self.fixed = tuple(fixed[d] for d in decays)  # [beta1, beta2, eps, decay, threads] per parameter

    def construct(self, gradients, grad_factor=1.0):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        dynamic = ops.stack((ops.reshape(lr, ()), ops.reshape(ops.cast(grad_factor, ms.float32), ())))
        return self.hyper_map(ops.partial(_native_update, self.update_op, dynamic), self._parameters,
                              self.moments1, self.moments2, gradients, self.fixed)


_native_update = ops.MultitypeFuncGraph("native_update")


@_native_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _native_update_one(op, dynamic, param, m, v, gradient, fixed):
    return op(param, m, v, ops.cast(gradient, ms.float32), dynamic, fixed)


def choose_kernel(requested, device_target):
    """(kernel, reason): "native" or "mindspore" for optim.kernel `requested` on `device_target`."""
    if requested not in OPTIMIZER_KERNELS:
        raise UserError(f"optim.kernel must be one of {', '.join(OPTIMIZER_KERNELS)}, got {requested!r}")
    if requested == "mindspore":
        return "mindspore", "optim.kernel: mindspore"
    if device_target != "CPU":
        if requested == "native":
            raise UserError(f"optim.kernel: native runs on CPU only (this run's device is {device_target}); "
                            "use auto or mindspore")
        return "mindspore", f"the native kernel is CPU-only (device {device_target})"
    from src.native.kernels import build_problem
    problem = build_problem("adamw")
    if problem is None:
        return "native", f"optim.kernel: {requested} on CPU"
    if requested == "native":
        raise UserError(f"optim.kernel: native: {problem}; or set optim.kernel: mindspore")
    return "mindspore", f"native kernel not built: {problem}"


def build_optimizer(params, optim_cfg, total_steps):
    if optim_cfg.name != "adamw":
        raise ValueError(f"optim.name: only 'adamw' is implemented, got {optim_cfg.name!r}")
    decay, no_decay = split_decay(params, optim_cfg.no_decay)
    groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    schedule = functools.partial(lr_at, base_lr=optim_cfg.lr, end_lr=optim_cfg.end_lr,
                                 warmup_steps=optim_cfg.warmup_steps, total_steps=total_steps,
                                 schedule=optim_cfg.schedule)
    schedule(optim_cfg.warmup_steps)  # a bad optim.schedule fails here (past the warm-up), not at a later step
    kernel, reason = choose_kernel(optim_cfg.kernel, ms.get_context("device_target"))
    # a float learning rate becomes a scalar Parameter (LR_PARAM) the graph reads; apply_lr sets it every step
    settings = dict(learning_rate=float(np.float32(schedule(0))), beta1=optim_cfg.beta1, beta2=optim_cfg.beta2,
                    eps=optim_cfg.eps)
    if kernel == "native":
        from src.native.kernels import kernel_threads
        optimizer = NativeAdamWeightDecay(groups, threads=kernel_threads(), **settings)
    else:
        optimizer = nn.AdamWeightDecay(groups, **settings)
    optimizer.kernel_choice = (kernel, reason)
    assert optimizer.learning_rate.name == LR_PARAM and optimizer.learning_rate.shape == ()
    optimizer.lr_schedule = schedule  # step -> learning rate, on the host
    return optimizer


def current_lr(optimizer):
    """The learning rate the optimizer's next step uses: the schedule at its global_step, rounded to float32."""
    step = int(optimizer.global_step.asnumpy().reshape(-1)[0])
    return float(np.float32(optimizer.lr_schedule(step)))


def apply_lr(optimizer):
    """Set the optimizer's learning-rate Parameter to `current_lr` (call on the host before every step); returns it."""
    lr = current_lr(optimizer)
    # ops.assign, not set_data: in PyNative mode the optimizer kept reading the old value after set_data
    ops.assign(optimizer.learning_rate, ms.Tensor(np.array(lr, np.float32)))
    return lr
