"""Every preset with large shapes builds and runs one training step (loss and gradients of every trainable
parameter) of every task it can run, cut to one layer per stack, so a preset can never ship a task whose shapes do not
fit (as MAM did with 1024-d audio features regressing onto a 2048-wide encoder output).

Widths, vocabularies, sequence lengths and modes are the presets' own; only layer counts are cut. PyNative mode
(shape errors show up exactly as in graph mode, without minutes of compiling per task). Batches of one sample (two
for retrieval's in-batch negatives): opt_10b's one-layer cut still holds ~0.45 B parameters.
"""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.models.opt import build_model
from src.tasks.caption import CaptionTask, VQATask
from src.tasks.pretrain import PRETRAIN_TASK_NAMES, build_task
from src.tasks.retrieval import RetrievalTask
from tests.helpers import model_config, task_batch

PRESETS = ("medium", "opt_1b", "opt_10b", "opt_1b_released", "opt_modelzoo_caption")


def one_layer_overrides(cfg):
    m = cfg.model
    cuts = {f"model.{stack}.layers": min(m[stack].layers, 1) for stack in ("text", "image", "audio", "cross")}
    for dec in ("text_decoder", "image_decoder"):
        cuts[f"model.{dec}.layers"] = 1
        cuts[f"model.{dec}.memory_layers"] = min(m[dec].memory_layers, 1)
    return [f"{k}={v}" for k, v in cuts.items()]


def preset_config(name):
    return model_config(name, one_layer_overrides(model_config(name)))


def finetune_batch(cfg, task, batch=2, seed=0):
    """Columns of the caption / vqa / retrieval batches the fine-tune pipelines produce."""
    rng = np.random.default_rng(seed)
    cols = task_batch("itc", cfg.model, cfg.pretrain, batch=batch, seed=seed)
    ld, vocab = cfg.model.text_decoder.max_len, cfg.model.text.vocab_size
    cols.update(question_ids=cols["text_ids"], question_mask=cols["text_mask"],
                dec_input=rng.integers(1, vocab, (batch, ld)).astype(np.int32),
                dec_target=rng.integers(1, vocab, (batch, ld)).astype(np.int32),
                dec_weights=np.ones((batch, ld), np.float32))
    return cols


def one_step(task, cols):
    """Loss and gradients of every trainable parameter; all finite."""
    params = task.trainable_params()
    inputs = [Tensor(cols[name]) for name in task.input_names]
    loss, grads = ms.value_and_grad(task, None, params)(*inputs)
    assert math.isfinite(float(loss.asnumpy()))
    assert len(grads) == len(params)
    for p, g in zip(params, grads):
        assert g.shape == p.shape, p.name
    return float(loss.asnumpy())


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_task_of_the_preset_runs_one_step(preset):
    cfg = preset_config(preset)
    ms.set_seed(0)
    model = build_model(cfg.model)
    model.set_train(True)
    for name in PRETRAIN_TASK_NAMES:
        task = build_task(name, model, cfg.pretrain, has_audio=True)
        one_step(task, task_batch(name, cfg.model, cfg.pretrain, batch=1))
    for task, batch in ((CaptionTask(model, has_audio=False, label_smoothing=0.1), 1),
                        (CaptionTask(model, has_audio=True, label_smoothing=0.1), 1),
                        (VQATask(model, has_audio=False, label_smoothing=0.1), 1),
                        (RetrievalTask(model), 2)):     # retrieval draws in-batch negatives
        one_step(task, finetune_batch(cfg, task, batch=batch))
