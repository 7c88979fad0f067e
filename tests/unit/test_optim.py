"""Optimizer: decay groups on the real tiny model, the learning-rate schedule at hand-computed steps, and the built
optimizer following the schedule step by step through its learning-rate Parameter (PyNative)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.engine.optim import (LR_PARAM, apply_lr, build_optimizer, current_lr, lr_at, select_trainable,
                              split_decay)
from src.errors import UserError
from src.models.opt import build_model
from tests.helpers import model_config


@pytest.fixture(scope="module")
def cfg():
    return model_config("tiny")


def cell_parameters(model):
    """Parameter names by the kind of cell that owns them (found from the cells, not from the names)."""
    kinds = {"norm": set(), "dense_weight": set(), "conv_weight": set(), "bias": set(), "table": set()}
    for _, cell in model.cells_and_names():
        if isinstance(cell, nn.LayerNorm):
            kinds["norm"] |= {cell.gamma.name, cell.beta.name}
        elif isinstance(cell, (nn.Dense, nn.Conv1d)):
            kinds["dense_weight" if isinstance(cell, nn.Dense) else "conv_weight"].add(cell.weight.name)
            if cell.bias is not None:
                kinds["bias"].add(cell.bias.name)
        elif isinstance(cell, nn.Embedding):
            kinds["table"].add(cell.embedding_table.name)
    return kinds


def test_split_decay_on_the_tiny_model(cfg):
    model = build_model(cfg.model)
    params = model.trainable_params()
    decay, no_decay = split_decay(params, cfg.optim.no_decay)
    decay, no_decay = {p.name for p in decay}, {p.name for p in no_decay}
    assert not decay & no_decay and len(decay) + len(no_decay) == len(params)

    kinds = cell_parameters(model)
    assert len(kinds["norm"]) > 50 and len(kinds["dense_weight"]) > 50  # the search found the real cells
    assert kinds["norm"] | kinds["bias"] | kinds["table"] <= no_decay
    assert decay == kinds["dense_weight"] | kinds["conv_weight"]
    assert {"image_encoder.global_token", "image_encoder.mask_token", "audio_encoder.mask_token",
            "contrastive.logit_scale", "text_embed.type_embedding", "mlm_head.bias",
            "text_decoder.output_bias"} <= no_decay
    assert {"cross_encoder.blocks.0.ln1.gamma", "cross_encoder.final_norm.beta",
            "text_embed.proj_norm.gamma"} <= no_decay  # LayerNorms whose names do not say "layer_norm"


def test_split_decay_keywords_are_case_insensitive_substrings(cfg):
    params = build_model(cfg.model).trainable_params()
    decay, no_decay = split_decay(params, ["POOLER"])
    assert "pooler.weight" in {p.name for p in no_decay}
    assert "pooler.weight" not in {p.name for p in decay}
    assert "cross_encoder.blocks.0.attn.query.weight" in {p.name for p in decay}
    assert "text_encoder.word_embeddings.embedding_table" in {p.name for p in decay}  # no keyword names it


@pytest.mark.parametrize("schedule, step, expected", [
    # base 2.0, end 0.5, 4 warm-up steps, 12 steps in all: warm-up 2 * (step + 1) / 4
    ("cosine", 0, 0.5), ("cosine", 1, 1.0), ("cosine", 3, 2.0),
    # cosine: 0.5 + 0.75 * (1 + cos(pi * (step - 4) / 8))
    ("cosine", 4, 2.0), ("cosine", 6, 0.5 + 0.75 * (1 + math.sqrt(0.5))), ("cosine", 8, 1.25),
    ("cosine", 10, 0.5 + 0.75 * (1 - math.sqrt(0.5))), ("cosine", 12, 0.5), ("cosine", 30, 0.5),
    # linear: 2.0 - 1.5 * (step - 4) / 8
    ("linear", 0, 0.5), ("linear", 4, 2.0), ("linear", 6, 1.625), ("linear", 10, 0.875), ("linear", 12, 0.5),
    ("linear", 30, 0.5),
    ("constant", 0, 0.5), ("constant", 3, 2.0), ("constant", 4, 2.0), ("constant", 30, 2.0),
])
def test_lr_at_hand_values(schedule, step, expected):
    assert lr_at(step, 2.0, 0.5, 4, 12, schedule) == pytest.approx(expected, rel=1e-12)


def test_lr_at_without_warmup_starts_at_base_and_rejects_unknown_schedules():
    assert lr_at(0, 2.0, 0.5, 0, 10, "cosine") == pytest.approx(2.0)
    assert lr_at(5, 2.0, 0.5, 0, 10, "linear") == pytest.approx(1.25)
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_at(5, 2.0, 0.5, 0, 10, "step")


def optim_section(cfg, **updates):
    return cfg.with_updates({f"optim.{k}": v for k, v in updates.items()}).optim


def test_the_learning_rate_is_a_scalar_parameter_whatever_the_step_count(cfg):
    """train.steps and the optim.lr* settings must not shape the graph (src.engine.context.enable_compile_cache
    leaves them out of the compile-cache key): the optimizer holds one float32 scalar, not a table."""
    params = build_model(cfg.model).trainable_params()
    for steps in (3, 5000):
        optimizer = build_optimizer(params, optim_section(cfg, lr=2.0, end_lr=0.5, warmup_steps=4,
                                                          schedule="linear"), steps)
        lr = optimizer.learning_rate
        assert lr.name == LR_PARAM and lr.shape == () and lr.dtype == ms.float32 and not optimizer.dynamic_lr
        assert float(lr.asnumpy()) == pytest.approx(0.5)   # lr_at(0): warm-up from lr / warmup_steps
    with pytest.raises(ValueError, match="optim.schedule"):
        build_optimizer(params, optim_section(cfg, warmup_steps=4, schedule="step"), 10)


def test_build_optimizer_rejects_other_names(cfg):
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(build_model(cfg.model).trainable_params(), optim_section(cfg, name="sgd"), 10)


def test_optimizer_follows_the_schedule_and_decays_only_the_decay_group(cfg, pynative):
    """With zero gradients AdamW's step is pure weight decay: w <- w * (1 - lr_t * wd) for the decay group, nothing
    for the rest; so the parameters show both the learning rate used at each step and the groups."""
    model = build_model(cfg.model)
    optim = optim_section(cfg, lr=0.1, end_lr=0.01, warmup_steps=2, weight_decay=0.5)
    total = 6
    optimizer = build_optimizer(model.trainable_params(), optim, total)
    by_name = {p.name: p for p in model.trainable_params()}
    decayed = by_name["pooler.weight"]
    kept = [by_name[n] for n in ("cross_encoder.final_norm.gamma", "text_encoder.word_embeddings.embedding_table",
                                 "contrastive.logit_scale")]
    zero_grads = tuple(ops.zeros_like(p) for p in optimizer.parameters)
    kept_before = [p.asnumpy().copy() for p in kept]
    for step in range(total):
        expected_lr = lr_at(step, 0.1, 0.01, 2, total, "cosine")
        assert current_lr(optimizer) == pytest.approx(expected_lr, rel=1e-6)
        assert apply_lr(optimizer) == float(optimizer.learning_rate.asnumpy())
        before = decayed.asnumpy().copy()
        optimizer(zero_grads)
        np.testing.assert_allclose(decayed.asnumpy(), before * (1 - expected_lr * 0.5), rtol=1e-6, atol=1e-9)
    assert current_lr(optimizer) == pytest.approx(0.01, rel=1e-6)
    for param, value in zip(kept, kept_before):
        np.testing.assert_array_equal(param.asnumpy(), value)


def test_select_trainable_drops_whole_name_components_and_rejects_bad_prefixes(cfg):
    params = build_model(cfg.model).trainable_params()
    names = [p.name for p in params]
    assert [p.name for p in select_trainable(params, [])] == names
    kept = [p.name for p in select_trainable(params, ["text_encoder", "contrastive.text_proj"])]
    assert kept == [n for n in names if not n.startswith(("text_encoder.", "contrastive.text_proj."))]
    assert len(kept) < len(names) and any(n.startswith("contrastive.") for n in kept)
    with pytest.raises(UserError, match=r"train.freeze: 'text_enc' matches no parameter.*text_encoder"):
        select_trainable(params, ["text_enc"])  # a prefix is a whole name component, not a substring
    with pytest.raises(UserError, match="freezes every parameter"):
        select_trainable(params, sorted({n.split(".")[0] for n in names}))
