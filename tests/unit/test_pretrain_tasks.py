"""Pre-training task Cells (PyNative): every task gives a finite, chance-level loss on a well-formed batch; MLM, ITM
and ITC equal a numpy re-computation from the model's own pieces; masked-feature targets pass no gradient."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.data.labels import ITM_AUDIO_SWAPPED, ITM_IMAGE_SWAPPED, ITM_MATCHED, ITM_SAME_OTHER
from src.models.opt import build_model
from src.tasks import pretrain
from src.tasks.pretrain import build_task
from tests.helpers import model_config, task_batch

# Loss of an untrained model (near-uniform logits, near-zero regression outputs) with the tiny config: vocab 64,
# 16 VQ codes + 3 specials, 2 pair classes (+ 5 three-modal classes), standardised targets of mean square 1.
CHANCE = {"mlm": math.log(64), "td": math.log(64), "id": math.log(19), "mvm": 1.0}


def chance_loss(name, has_audio):
    if name == "itm":
        return math.log(2) + (math.log(5) if has_audio else 0.0)
    return CHANCE.get(name)


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


@pytest.fixture(scope="module")
def cfg():
    return model_config("tiny")


@pytest.fixture(scope="module")
def model(cfg):
    ms.set_seed(0)
    return build_model(cfg.model)


def tensors(batch, names):
    return [Tensor(batch[name]) for name in names]


def np_cross_entropy(logits, labels, weights=None):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, labels[..., None].astype(np.int64), -1)[..., 0]
    return nll.mean() if weights is None else (nll * weights).sum() / weights.sum()


def np_info_nce(a, b, scale):
    logits = scale * a.astype(np.float64) @ b.T.astype(np.float64)
    labels = np.arange(len(a))
    return 0.5 * (np_cross_entropy(logits, labels) + np_cross_entropy(logits.T, labels))


CASES = [(name, True) for name in ("mlm", "mvm", "mam", "itm", "itc", "td", "id")] + \
        [(name, False) for name in ("mlm", "mvm", "itm", "itc", "td", "id")]


@pytest.mark.parametrize("name, has_audio", CASES)
def test_every_task_gives_a_finite_chance_level_scalar(cfg, model, name, has_audio):
    task = build_task(name, model, cfg.pretrain, has_audio)
    assert ("audio" in task.input_names) == has_audio
    loss = task(*tensors(task_batch(name, cfg.model, cfg.pretrain, has_audio=has_audio), task.input_names))
    assert loss.shape == () and loss.dtype == ms.float32
    value = float(loss.asnumpy())
    assert math.isfinite(value) and value > 0
    chance = chance_loss(name, has_audio)
    if chance is not None:
        assert value == pytest.approx(chance, abs=0.1)


def encode_all(model, batch, with_audio=True):
    text, t_mask = model.encode_text(Tensor(batch["text_ids"]), Tensor(batch["text_mask"]))
    image, i_mask = model.encode_image(Tensor(batch["image"]))
    if not with_audio:
        return text, t_mask, image, i_mask
    audio, a_mask = model.encode_audio(Tensor(batch["audio"]), Tensor(batch["frame_mask"]))
    return text, t_mask, image, i_mask, audio, a_mask


def test_mlm_loss_equals_numpy_recomputation(cfg, model):
    task = build_task("mlm", model, cfg.pretrain, True)
    batch = task_batch("mlm", cfg.model, cfg.pretrain, batch=3, seed=1)
    batch["mlm_weights"][:, -3:] = 0.0  # unused prediction slots
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())

    seq, _ = model.fuse(*encode_all(model, batch))
    hidden = seq.asnumpy()[np.arange(3)[:, None], batch["mlm_positions"]]
    logits = model.mlm_logits(Tensor(hidden)).asnumpy()
    assert loss == pytest.approx(np_cross_entropy(logits, batch["mlm_labels"], batch["mlm_weights"]), rel=1e-5)


@pytest.mark.parametrize("has_audio", [True, False])
def test_itm_loss_equals_numpy_recomputation(cfg, model, has_audio):
    task = build_task("itm", model, cfg.pretrain, has_audio)
    batch = task_batch("itm", cfg.model, cfg.pretrain, seed=2, has_audio=has_audio)
    batch["itm_labels"] = np.array([ITM_MATCHED, ITM_AUDIO_SWAPPED, ITM_IMAGE_SWAPPED, ITM_SAME_OTHER], np.int32)
    heads = (model.pair_head, model.itm_head)
    for head in heads:  # let the towers' agreement count (a new head's gain is 0)
        head.gain.set_data(Tensor(np.float32(0.01)))
    try:
        loss = float(task(*tensors(batch, task.input_names)).asnumpy())
        parts = encode_all(model, batch, has_audio)
        pair_logits = model.pair_logits(*parts[:4]).asnumpy()
        expected = np_cross_entropy(pair_logits, np.array([1, 1, 0, 0]))  # the image is the text's in rows 0, 1
        if has_audio:
            expected += np_cross_entropy(model.matching_logits(*parts).asnumpy(), batch["itm_labels"])
    finally:
        for head in heads:
            head.gain.set_data(Tensor(np.float32(0.0)))
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("has_audio", [True, False])
def test_itc_loss_equals_numpy_recomputation(cfg, model, has_audio):
    task = build_task("itc", model, cfg.pretrain, has_audio)
    batch = task_batch("itc", cfg.model, cfg.pretrain, seed=3, has_audio=has_audio)
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())

    parts = encode_all(model, batch, has_audio)
    t = model.text_features(parts[0], parts[1]).asnumpy()
    i = model.image_features(parts[2]).asnumpy()
    scale = float(model.contrastive.scale().asnumpy())
    assert scale == pytest.approx(1 / 0.07, rel=1e-5)  # the initial temperature of the tiny config
    if has_audio:
        a = model.audio_features(parts[4], parts[5]).asnumpy()
        expected = (np_info_nce(t, i, scale) + np_info_nce(t, a, scale) + np_info_nce(i, a, scale)) / 3
    else:
        expected = np_info_nce(t, i, scale)
    assert loss == pytest.approx(expected, rel=1e-5)


SIDE_WORD, OTHER_SIDE_WORD = 7, 8  # token ids standing for 左 / 右 in the layout-negative tests


def with_side_words(batch, rows):
    """The batch's texts with SIDE_WORD at position 2 in `rows` and no side word elsewhere."""
    ids = batch["text_ids"].copy()
    ids[(ids == SIDE_WORD) | (ids == OTHER_SIDE_WORD)] = 9
    ids[rows, 2] = SIDE_WORD
    return {**batch, "text_ids": ids}


def mirrored_image_parts(model, batch):
    return model.encode_image(Tensor(np.ascontiguousarray(batch["image"][..., ::-1])))


@pytest.mark.parametrize("has_audio", [True, False])
def test_itc_layout_negatives_equal_numpy_recomputation(cfg, model, has_audio):
    """A caption with a left/right word also competes with its own image mirrored; the others do not."""
    task = build_task("itc", model, cfg.pretrain, has_audio, mirror_ids=[SIDE_WORD, OTHER_SIDE_WORD])
    batch = with_side_words(task_batch("itc", cfg.model, cfg.pretrain, seed=3, has_audio=has_audio), [0, 2])
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())

    parts = encode_all(model, batch, has_audio)
    t = model.text_features(parts[0], parts[1]).asnumpy().astype(np.float64)
    i = model.image_features(parts[2]).asnumpy().astype(np.float64)
    m = model.image_features(mirrored_image_parts(model, batch)[0]).asnumpy().astype(np.float64)
    scale = float(model.contrastive.scale().asnumpy())
    logits = scale * t @ i.T
    rows = [np.concatenate([logits[k], [scale * t[k] @ m[k]]]) if k in (0, 2) else logits[k] for k in range(4)]
    text_image = 0.5 * (np.mean([np_cross_entropy(r[None], np.array([k])) for k, r in enumerate(rows)])
                        + np_cross_entropy(logits.T, np.arange(4)))
    assert text_image > np_info_nce(t, i, scale)
    if has_audio:
        a = model.audio_features(parts[4], parts[5]).asnumpy()
        expected = (text_image + np_info_nce(t, a, scale) + np_info_nce(i, a, scale)) / 3
    else:
        expected = text_image
    assert loss == pytest.approx(expected, rel=1e-5)


def test_itm_layout_negatives_equal_numpy_recomputation(cfg, model):
    """(caption with a left/right word, its own image mirrored) is one more non-matching pair; rows whose image is
    another sample's (swapped) or whose caption has no such word add nothing."""
    task = build_task("itm", model, cfg.pretrain, False, mirror_ids=[SIDE_WORD])
    batch = with_side_words(task_batch("itm", cfg.model, cfg.pretrain, seed=2, has_audio=False), [0, 2, 3])
    batch["itm_labels"] = np.array([ITM_MATCHED, ITM_MATCHED, ITM_IMAGE_SWAPPED, ITM_AUDIO_SWAPPED], np.int32)
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())

    text, t_mask, image, i_mask = encode_all(model, batch, False)
    plain = np_cross_entropy(model.pair_logits(text, t_mask, image, i_mask).asnumpy(), np.array([1, 1, 0, 1]))
    mirrored = model.pair_logits(text, t_mask, mirrored_image_parts(model, batch)[0], i_mask).asnumpy()
    expected = plain + np_cross_entropy(mirrored, np.zeros(4, np.int64), np.array([1.0, 0.0, 0.0, 1.0]))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_itm_layout_negatives_update_the_matching_centre_once_a_step(cfg):
    """The mirrored pairs join the same matching-head call: one running-mean update (weight 1 - decay = 0.1) over
    the sims of all 2B pairs, not a second update per step."""
    model = build_model(cfg.model)
    task = build_task("itm", model, cfg.pretrain, False, mirror_ids=[SIDE_WORD])
    batch = with_side_words(task_batch("itm", cfg.model, cfg.pretrain, seed=6, has_audio=False), [0, 1])
    model.set_train(True)
    try:
        task(*tensors(batch, task.input_names))
    finally:
        model.set_train(False)
    head = model.pair_head
    assert float(head.centre_weight.asnumpy()) == pytest.approx(0.1, rel=1e-6)
    text, t_mask, image, _ = encode_all(model, batch, False)
    t = model.text_features(text, t_mask).asnumpy()
    sims = np.concatenate([(t * model.image_features(img).asnumpy()).sum(-1)
                           for img in (image, mirrored_image_parts(model, batch)[0])])
    assert float(head.centre_sum.asnumpy()[0]) == pytest.approx(0.1 * sims.mean(), rel=1e-4)


@pytest.mark.parametrize("name", ["itc", "itm"])
def test_layout_negatives_leave_captions_without_side_words_alone(cfg, model, name):
    batch = with_side_words(task_batch(name, cfg.model, cfg.pretrain, seed=5, has_audio=False), [])
    plain, layout = (build_task(name, model, cfg.pretrain, False, mirror_ids=ids) for ids in (None, [SIDE_WORD]))
    values = [float(t(*tensors(batch, t.input_names)).asnumpy()) for t in (plain, layout)]
    assert values[1] == pytest.approx(values[0], rel=1e-6)


@pytest.mark.parametrize("name, head, encoder", [("mvm", "image_regression_head", "image_encoder"),
                                                 ("mam", "audio_regression_head", "audio_encoder")])
def test_masked_feature_targets_pass_no_gradient(cfg, name, head, encoder, monkeypatch):
    """With the head's output weights zeroed the prediction is a constant (its bias), so any gradient reaching the
    single-modal encoder would have come through the target. The contrastive term is on, so both uses of the target
    are covered; a control run without stop-gradient shows the check can fail."""
    pretrain_cfg = cfg.with_updates({"pretrain.mvm_contrastive_weight": 0.5,
                                     "pretrain.mam_contrastive_weight": 0.5}).pretrain
    model = build_model(cfg.model)
    task = build_task(name, model, pretrain_cfg, True)
    inputs = tensors(task_batch(name, cfg.model, pretrain_cfg, seed=4), task.input_names)
    weights = [p for p in model.trainable_params() if p.name.startswith(encoder + ".")]

    def encoder_grad_norm():
        grads = ms.grad(task, grad_position=None, weights=weights)(*inputs)
        return math.sqrt(sum(float(np.square(g.asnumpy()).sum()) for g in grads))

    assert encoder_grad_norm() > 1e-4  # the masked-input branch reaches the encoder
    out = getattr(model, head).out
    out.weight.set_data(Tensor(np.zeros(out.weight.shape, np.float32)))
    out.bias.set_data(Tensor(np.random.default_rng(5).standard_normal(out.bias.shape).astype(np.float32)))
    assert encoder_grad_norm() == 0.0
    monkeypatch.setattr(pretrain.ops, "stop_gradient", lambda x: x)
    assert encoder_grad_norm() > 1e-4
