"""The convolutional image stem (model.image.stem: conv): stage widths, patch-grid order, BatchNorm's train / eval
behaviour, and that its moving statistics are saved and restored with the checkpoint."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.weights.checkpoint import load_into
from src.models.encoders import ConvStem, ImageEncoder, stem_widths
from src.models.opt import build_model
from tests.helpers import model_config


def conv_cfg(*overrides):
    return model_config("tiny", ["model.image.stem=conv", "model.text.vocab_size=50", *overrides]).model


def test_stage_widths_follow_the_patch_size():
    assert stem_widths(8, 128) == [32, 64, 128]           # the small model's stem
    assert stem_widths(16, 48) == [32, 48, 48, 48]        # capped at the encoder width
    assert stem_widths(4, 64, [16, 24]) == [16, 24]
    with pytest.raises(ValueError, match="stem_channels has 3 widths but patch_size 4 needs 2"):
        stem_widths(4, 64, [16, 24, 32])
    with pytest.raises(ValueError, match="power-of-2 patch_size"):
        stem_widths(12, 64)


def test_unknown_stem_is_rejected():
    cfg = model_config("tiny", ["model.image.stem=resnet"]).model
    with pytest.raises(ValueError, match="model.image.stem must be 'linear' or 'conv'"):
        ImageEncoder(cfg, cfg.image)


def test_output_cells_are_in_row_major_patch_order(pynative):
    """A change inside patch (row 1, col 2) of a 4 x 4 grid can only reach the output cells whose receptive field
    holds it: rows 1-2, columns 2-3 (indices 6, 7, 10, 11); a column-major stem would move index 9 instead."""
    ms.set_seed(0)
    stem = ConvStem(3, 16, [8, 8, 8])
    stem.set_train(False)
    base = np.zeros((1, 3, 32, 32), np.float32)
    bright = base.copy()
    bright[:, :, 8:16, 16:24] = 2.0
    delta = np.abs(stem(Tensor(bright)).asnumpy() - stem(Tensor(base)).asnumpy()).sum(-1)[0]
    assert delta.shape == (16,)
    moved = set(np.flatnonzero(delta > 1e-6))
    assert 6 in moved and moved <= {6, 7, 10, 11}, moved


def test_batchnorm_uses_batch_statistics_only_in_training(pynative):
    cfg = conv_cfg()
    ms.set_seed(0)
    encoder = ImageEncoder(cfg, cfg.image)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    mates = rng.standard_normal((3, 3, 32, 32)).astype(np.float32) * 3.0

    def first_of(batch):
        return encoder(Tensor(batch))[0].asnumpy()[0]

    encoder.set_train(False)
    np.testing.assert_allclose(first_of(image), first_of(np.concatenate([image, mates])), atol=1e-5)
    encoder.set_train(True)
    assert not np.allclose(first_of(np.concatenate([image, image])), first_of(np.concatenate([image, mates])),
                           atol=1e-3)


def test_moving_statistics_move_in_training_and_round_trip_through_a_checkpoint(pynative):
    cfg = conv_cfg()                                      # tiny: patch 8 -> three stride-2 stages, three BatchNorms
    ms.set_seed(0)
    model = build_model(cfg)
    means = sorted(n for n in model.parameters_dict() if n.endswith("moving_mean"))
    assert len(means) == 3 and all(n.startswith("image_encoder.conv_stem.") for n in means)
    first = model.parameters_dict()[means[0]]
    assert not np.any(first.asnumpy())
    images = Tensor(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32) + 5.0)
    model.set_train(True)
    model.encode_image(images)
    assert np.all(np.abs(first.asnumpy()) > 0)            # every channel's running mean took a step
    model.set_train(False)
    expected = model.encode_image(images)[0].asnumpy()

    saved = {name: p.asnumpy().copy() for name, p in model.parameters_dict().items()}
    ms.set_seed(1)
    restored = build_model(cfg)
    restored.set_train(False)
    assert not np.allclose(restored.encode_image(images)[0].asnumpy(), expected, atol=1e-3)
    load_into(restored, saved)
    np.testing.assert_allclose(restored.encode_image(images)[0].asnumpy(), expected, atol=1e-5)
