"""The image tokenizer: quantisation, EMA codebook, dead-code restarts, straight-through gradients, shapes, tokens."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from src.data.labels import IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_PAD_ID, codes_from_tokens
from src.data.masking import image_token_targets
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_uint8
from src.models.vq import (OFFSET_STEP, ROW_STRIDE, VQVAE, Quantizer, ReconstructionLoss, build_vq, codebook_usage,
                           psnr)


def _quantizer(table, decay=0.8, epsilon=1e-5, dead_after=0, dead_threshold=0.0, seeded=True):
    """A Quantizer with codebook `table` (K, D), EMA sum = table, EMA count = 1, already seeded unless told."""
    table = np.asarray(table, np.float32)
    q = Quantizer(table.shape[0], table.shape[1], decay, epsilon, dead_after, dead_threshold)
    q.embedding.set_data(Tensor(table))
    q.ema_sum.set_data(Tensor(table.copy()))
    q.seeded.set_data(Tensor(np.array(1.0 if seeded else 0.0, np.float32)))
    return q


def _as_map(rows, h, w):
    """(N, D) rows -> z (1, D, h, w) whose row-major flattening gives back `rows`."""
    rows = np.asarray(rows, np.float32)
    return Tensor(rows.reshape(1, h, w, -1).transpose(0, 3, 1, 2).copy())


TABLE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]


def test_quantisation_picks_the_nearest_code():
    rows = [[0.1, -0.2], [0.9, 0.3], [0.2, 0.8], [4.0, 6.0], [0.6, 0.0], [0.4, 0.45]]
    q = _quantizer(TABLE)
    q.set_train(False)
    z_q, codes, commitment = q(_as_map(rows, 2, 3))
    assert codes.asnumpy().reshape(-1).tolist() == [0, 1, 2, 3, 1, 0]
    chosen = np.asarray(TABLE, np.float32)[[0, 1, 2, 3, 1, 0]]
    np.testing.assert_allclose(z_q.asnumpy().transpose(0, 2, 3, 1).reshape(-1, 2), chosen, atol=1e-6)
    np.testing.assert_allclose(float(commitment.asnumpy()), np.mean((np.asarray(rows) - chosen) ** 2), rtol=1e-5)
    np.testing.assert_array_equal(q.embedding.asnumpy(), np.asarray(TABLE, np.float32))  # eval mode: no update


def test_ema_update_follows_the_formula_and_moves_codes_towards_their_vectors():
    decay, eps = 0.8, 1e-5
    rows = np.array([[0.2, 0.2], [0.4, -0.2], [1.5, 0.5], [0.1, 1.3]], np.float32)  # codes 0, 0, 1, 2
    q = _quantizer(TABLE, decay, eps)
    q.set_train(True)
    q(_as_map(rows, 2, 2))
    table = np.asarray(TABLE, np.float64)
    counts = np.array([2.0, 1.0, 1.0, 0.0])
    sums = np.array([rows[0] + rows[1], rows[2], rows[3], [0.0, 0.0]], np.float64)
    count = decay * 1.0 + (1 - decay) * counts
    summed = decay * table + (1 - decay) * sums
    n = count.sum()
    expected = summed / ((count + eps) / (n + 4 * eps) * n)[:, None]
    np.testing.assert_allclose(q.ema_count.asnumpy(), count, rtol=1e-6)
    np.testing.assert_allclose(q.ema_sum.asnumpy(), summed, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(q.embedding.asnumpy(), expected, rtol=1e-5, atol=1e-6)
    means = np.array([rows[:2].mean(0), rows[2], rows[3]])
    before = np.linalg.norm(table[:3] - means, axis=1)
    after = np.linalg.norm(q.embedding.asnumpy()[:3] - means, axis=1)
    assert np.all(after < before)
    np.testing.assert_array_equal(q.age.asnumpy(), [0, 0, 0, 1])


def test_unused_code_is_restarted_from_encoder_outputs():
    rows = np.array([[0.1, 0.0], [0.9, 0.1], [0.0, 0.2], [1.1, 0.0], [0.2, 0.1], [0.8, -0.1]], np.float32)
    table = [[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [-50.0, -50.0]]  # codes 2 and 3 are never chosen
    q = _quantizer(table, decay=0.9, dead_after=2)
    q.set_train(True)
    z = _as_map(rows, 2, 3)
    q(z)
    np.testing.assert_allclose(q.embedding.asnumpy()[2:], np.asarray(table, np.float32)[2:], rtol=1e-4)  # age 1
    q(z)
    offset = OFFSET_STEP % len(rows)  # the seeding offset after one step
    picks = rows[(np.arange(4) * ROW_STRIDE + offset) % len(rows)]
    np.testing.assert_allclose(q.embedding.asnumpy()[2:], picks[2:], atol=1e-6)
    np.testing.assert_array_equal(q.age.asnumpy(), [0, 0, 0, 0])
    np.testing.assert_allclose(q.ema_count.asnumpy()[2:], [1.0, 1.0])
    assert np.abs(q.embedding.asnumpy()[:2] - np.asarray(table, np.float32)[:2]).max() < 0.2  # live codes: EMA only


def test_low_ema_count_triggers_a_restart_and_the_first_step_seeds_every_code():
    rows = np.array([[0.1, 0.0], [0.9, 0.1], [0.0, 0.2], [1.1, 0.0]], np.float32)
    q = _quantizer([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]], decay=0.5, dead_threshold=0.6)
    q.set_train(True)
    q(_as_map(rows, 2, 2))  # code 2 unused: count 0.5 < 0.6
    np.testing.assert_allclose(q.embedding.asnumpy()[2], rows[(2 * ROW_STRIDE) % 4], atol=1e-6)

    fresh = _quantizer([[9.0, 9.0], [8.0, 8.0], [7.0, 7.0]], seeded=False)
    fresh.set_train(True)
    fresh(_as_map(rows, 2, 2))
    np.testing.assert_allclose(fresh.embedding.asnumpy(), rows[(np.arange(3) * ROW_STRIDE) % 4], atol=1e-6)
    assert float(fresh.seeded.asnumpy()) == 1.0


def _tiny_vq(image_size=16, downsample=4, codebook_size=8):
    return VQVAE(image_size, 3, 8, 4, codebook_size, downsample, 1, 0.9, 1e-5, 10, 0.0)


class _Grads(nn.Cell):
    def __init__(self, loss, params):
        super().__init__()
        self.grad = ms.value_and_grad(loss, None, params)

    def construct(self, images):
        return self.grad(images)


def test_straight_through_gradient_reaches_the_encoder():
    vq = _tiny_vq()
    vq.set_train(True)
    encoder_params = vq.encoder.trainable_params()
    images = Tensor(np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32))
    _, grads = _Grads(ReconstructionLoss(vq, 0.25), encoder_params)(images)
    assert len(grads) == len(encoder_params)
    assert all(np.abs(g.asnumpy()).sum() > 0 for g in grads)
    assert not any(p.requires_grad for p in vq.quantizer.get_parameters())  # the codebook is EMA-only


@pytest.mark.parametrize("image_size,downsample", [(32, 4), (64, 8), (96, 4), (96, 8)])
def test_encode_decode_shapes(image_size, downsample):
    vq = _tiny_vq(image_size, downsample)
    vq.set_train(False)
    images = np.random.default_rng(1).normal(size=(2, 3, image_size, image_size)).astype(np.float32)
    codes = vq.encode(images)
    side = image_size // downsample
    assert codes.shape == (2, side, side) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 8
    assert vq.decode(codes).shape == (2, 3, image_size, image_size)


def test_decode_rejects_image_decoder_tokens():
    vq = _tiny_vq()
    with pytest.raises(ValueError, match="codes_from_tokens"):
        vq.decode(np.full((1, 4, 4), 8 + 3))


def test_token_shift_round_trip_with_specials():
    codes = np.array([[0, 7, 3], [5, 0, 1]], np.int32)
    dec_input, target, weights = image_token_targets(codes, codebook_size=8, max_len=9)
    assert dec_input.tolist() == [IMAGE_BOS_ID, 3, 10, 6, 8, 3, 4, IMAGE_PAD_ID, IMAGE_PAD_ID]
    assert target.tolist() == [3, 10, 6, 8, 3, 4, IMAGE_EOS_ID, IMAGE_PAD_ID, IMAGE_PAD_ID]
    assert weights.tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(codes_from_tokens(target).reshape(2, 3), codes)
    np.testing.assert_array_equal(codes_from_tokens(dec_input).reshape(2, 3), codes)  # BOS and PAD dropped


def test_training_steps_lower_the_reconstruction_loss():
    from src.engine.train_step import LossScale, TrainStep
    ms.set_seed(0)
    vq = _tiny_vq()
    rng = np.random.default_rng(2)
    images = np.zeros((8, 3, 16, 16), np.float32)
    for i, image in enumerate(images):  # coloured squares on a flat background
        top, left = rng.integers(0, 8, size=2)
        image[i % 3, top:top + 8, left:left + 8] = 2.0
    opt = nn.Adam(vq.trainable_params(), learning_rate=3e-3)
    step = TrainStep(ReconstructionLoss(vq, 0.25), opt, LossScale(), clip_norm=0.0)
    vq.set_train(True)
    losses = [float(step(Tensor(images))[0].asnumpy()) for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.9 * losses[0]
    assert np.mean(losses[-3:]) < np.mean(losses[5:8])


def test_to_uint8_undoes_the_normalisation_and_psnr_and_usage_by_hand():
    pixels = np.array([0, 128, 255, 10, 20, 30], np.uint8).reshape(1, 1, 2, 3)  # (B, H, W, C)
    mean, std = 255 * np.array(IMAGENET_MEAN), 255 * np.array(IMAGENET_STD)
    normalised = ((pixels - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(to_uint8(normalised), pixels)
    np.testing.assert_array_equal(to_uint8(np.full((1, 3, 1, 1), 100.0, np.float32)), np.full((1, 1, 1, 3), 255))
    ref = np.zeros((2, 2, 2, 3), np.uint8)
    rec = ref.copy()
    rec[0] += 1  # MSE 1 -> 10 log10(255^2) = 48.13 dB
    rec[1, 0, 0, 0] = 12  # MSE 144 / 12 = 12 -> 10 log10(65025 / 12)
    np.testing.assert_allclose(psnr(ref, rec), [48.1308, 10 * np.log10(65025 / 12)], atol=1e-4)
    usage = codebook_usage(np.array([[0, 0], [1, 1]]), 4)
    assert usage["used_codes"] == 2 and usage["used_fraction"] == 0.5
    np.testing.assert_allclose(usage["perplexity"], 2.0)


def test_build_vq_reads_the_config_section():
    from tests.helpers import model_config
    cfg = model_config("tiny").vq.to_dict()
    cfg.update(image_size=32, downsample=4, codebook_size=12, code_dim=6, hidden=8, res_blocks=1)
    from src.config import Config
    vq = build_vq(Config(cfg))
    assert vq.grid_size == 8 and vq.quantizer.embedding.shape == (12, 6)
    with pytest.raises(ValueError, match="power of 2"):
        build_vq(Config({**cfg, "downsample": 6}))
