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
    batch["itm_image_src"] = np.array([0, 1, 3, 0], np.int32)  # the rows whose image / audio each text gets
    if has_audio:
        batch["itm_audio_src"] = np.array([0, 3, 2, 0], np.int32)
    paired = dict(batch, image=batch["image"][batch["itm_image_src"]])
    if has_audio:
        src = batch["itm_audio_src"]
        paired.update(audio=batch["audio"][src], frame_mask=batch["frame_mask"][src])
    heads = (model.pair_head, model.itm_head)
    for head in heads:  # let the towers' agreement count (a new head's gain is 0)
        head.gain.set_data(Tensor(np.float32(0.01)))
    try:
        loss = float(task(*tensors(batch, task.input_names)).asnumpy())
        parts = encode_all(model, paired, has_audio)
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


@pytest.mark.slow
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


# ----- per-sample audio presence: a sample's audio exists when its frame_mask has a real frame -----

def without_audio(batch, rows):
    """`batch` with the clips of `rows` absent, as the pipeline stores them: zero frames, frame_mask all 0 (and,
    deliberately, audio_masked left as it was: the task must not trust it)."""
    batch = dict(batch)
    batch["audio"], batch["frame_mask"] = batch["audio"].copy(), batch["frame_mask"].copy()
    batch["audio"][rows] = 0.0
    batch["frame_mask"][rows] = 0
    return batch


def rows_of(batch, rows):
    return {name: value[rows] for name, value in batch.items()}


def itc_expected(model, batch, audio_rows):
    parts = encode_all(model, batch)
    t = model.text_features(parts[0], parts[1]).asnumpy()
    i = model.image_features(parts[2]).asnumpy()
    a = model.audio_features(parts[4], parts[5]).asnumpy()
    scale = float(model.contrastive.scale().asnumpy())
    if not len(audio_rows):
        return np_info_nce(t, i, scale)
    r = np.asarray(audio_rows)
    return (np_info_nce(t, i, scale) + np_info_nce(t[r], a[r], scale) + np_info_nce(i[r], a[r], scale)) / 3


@pytest.mark.parametrize("audio_rows", [[0, 1], []], ids=["half_audio", "no_audio"])
def test_itc_audio_terms_cover_only_the_samples_with_audio(cfg, model, audio_rows):
    task = build_task("itc", model, cfg.pretrain, True)
    batch = task_batch("itc", cfg.model, cfg.pretrain, seed=3)
    batch = without_audio(batch, [r for r in range(4) if r not in audio_rows])
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())
    assert math.isfinite(loss)
    assert loss == pytest.approx(itc_expected(model, batch, audio_rows), rel=1e-5)


def test_mam_takes_no_loss_from_samples_without_audio(cfg, model):
    task = build_task("mam", model, cfg.pretrain, True)
    batch = without_audio(task_batch("mam", cfg.model, cfg.pretrain, seed=4), [2, 3])
    assert batch["audio_masked"][2:].sum() > 0  # the absent clips' masks would count if the task trusted them
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())
    half = float(task(*tensors(rows_of(batch, slice(0, 2)), task.input_names)).asnumpy())
    assert loss == pytest.approx(half, rel=1e-5)
    nothing = without_audio(batch, [0, 1, 2, 3])
    value = float(task(*tensors(nothing, task.input_names)).asnumpy())
    assert math.isfinite(value) and value == 0.0


def test_itm_three_modal_part_counts_only_rows_whose_clip_exists(cfg, model):
    task = build_task("itm", model, cfg.pretrain, True)
    batch = task_batch("itm", cfg.model, cfg.pretrain, seed=2)
    batch["itm_labels"] = np.array([ITM_MATCHED, ITM_AUDIO_SWAPPED, ITM_IMAGE_SWAPPED, ITM_SAME_OTHER], np.int32)
    batch = without_audio(batch, [1, 2])  # rows 1 and 2 were given an absent clip
    loss = float(task(*tensors(batch, task.input_names)).asnumpy())
    parts = encode_all(model, batch)
    expected = np_cross_entropy(model.pair_logits(*parts[:4]).asnumpy(), np.array([1, 1, 0, 0]))
    expected += np_cross_entropy(model.matching_logits(*parts).asnumpy(), batch["itm_labels"],
                                 np.array([1.0, 0.0, 0.0, 1.0]))
    assert loss == pytest.approx(expected, rel=1e-5)
    nothing = without_audio(batch, [0, 3])
    value = float(task(*tensors(nothing, task.input_names)).asnumpy())
    assert math.isfinite(value)
    assert value == pytest.approx(np_cross_entropy(model.pair_logits(*encode_all(model, nothing)[:4]).asnumpy(),
                                                   np.array([1, 1, 0, 0])), rel=1e-5)
