"""OPTModel: every config builds; forward shapes for every modality subset; padding never leaks into real outputs;
KV-cache decoding equals full decoding; a training step reaches every parameter and lowers a loss."""
import itertools

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.models.opt import OPTModel, build_model, set_compute_dtype
from src.models.summary import build_unallocated, count_parameters
from tests.helpers import model_config, model_inputs

MODALITIES = ("text", "image", "audio")
SUBSETS = [s for n in (1, 2, 3) for s in itertools.combinations(MODALITIES, n)]


def encoder_stack_params(width, layers, ffn, final_norm=True):
    """Hand count of a pre-LN encoder stack: per block 4 (W+b) attention projections, 2 FFN layers, 2 LayerNorms."""
    block = 4 * (width * width + width) + (width * ffn + ffn) + (ffn * width + width) + 2 * 2 * width
    return layers * block + (2 * width if final_norm and layers else 0)


@pytest.mark.parametrize("name", ["tiny", "small", "base", "opt_1b", "opt_10b"])
def test_every_config_builds_with_hand_checked_encoder_size(name):
    cfg = model_config(name).model
    counts = count_parameters(build_unallocated(cfg, vocab_size=21128))
    c = cfg.cross
    assert counts["cross_encoder"] == encoder_stack_params(c.hidden, c.layers, c.ffn, c.final_layer_norm)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert counts["itm_head"] == c.hidden * 5 + 5 + 1 + 3 + 1  # Dense, gain, running centre and its weight


def test_released_shapes_match_the_reference_estimates():
    one_b = count_parameters(build_unallocated(model_config("opt_1b").model))
    ten_b = count_parameters(build_unallocated(model_config("opt_10b").model))
    assert one_b["cross_encoder"] == 604_299_264          # reference: "encoder 604 M"
    assert 1.1e9 < one_b["total"] < 1.25e9                # reference: about 1.18 B
    assert 9.5e9 < ten_b["cross_encoder"] < 9.9e9         # reference: "10B encoder alone = 9.7 B"


def encode(model, x, subset, image_mode="pixels"):
    kwargs = {}
    if "text" in subset:
        kwargs["text"], kwargs["text_mask"] = model.encode_text(Tensor(x["text_ids"]), Tensor(x["text_mask"]))
    if "image" in subset:
        if image_mode == "pixels":
            kwargs["image"], kwargs["image_mask"] = model.encode_image(Tensor(x["images"]))
        else:
            kwargs["image"], kwargs["image_mask"] = model.encode_image(
                feats=Tensor(x["feats"]), boxes=Tensor(x["boxes"]), region_mask=Tensor(x["region_mask"]))
    if "audio" in subset:
        kwargs["audio"], kwargs["audio_mask"] = model.encode_audio(Tensor(x["audio"]), Tensor(x["frame_mask"]))
    return model.fuse(**kwargs)


def expected_length(cfg, subset):
    lengths = {"text": cfg.text.max_len, "image": (cfg.image.image_size // cfg.image.patch_size) ** 2 + 1,
               "audio": cfg.audio.max_frames // cfg.audio.subsample}
    return sum(lengths[m] for m in subset)


@pytest.mark.parametrize("name", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_forward_shapes_for_every_modality_subset(name, pynative):
    cfg = model_config(name, ["model.text.vocab_size=300"]).model
    model = build_model(cfg)
    model.set_train(False)
    x = model_inputs(cfg, batch=2)
    for subset in SUBSETS:
        seq, mask = encode(model, x, subset)
        assert seq.shape == (2, expected_length(cfg, subset), cfg.cross.hidden), subset
        assert mask.shape == seq.shape[:2]
        assert model.pool(seq).shape == (2, cfg.cross.hidden)
    text, t_mask = model.encode_text(Tensor(x["text_ids"]), Tensor(x["text_mask"]))
    assert model.mlm_logits(seq[:, :3]).shape == (2, 3, cfg.text.vocab_size)
    assert model.text_features(text, t_mask).shape == (2, cfg.heads.contrastive_dim)


def test_padding_and_masked_positions_never_change_real_outputs(tiny_cfg, pynative):
    cfg = tiny_cfg.model
    model = build_model(cfg)
    model.set_train(False)
    x = model_inputs(cfg, batch=2, text_len=7, audio_frames=13)
    y = {k: v.copy() for k, v in x.items()}
    rng = np.random.default_rng(1)
    y["text_ids"][:, 7:] = rng.integers(5, cfg.text.vocab_size, y["text_ids"][:, 7:].shape)
    y["audio"][:, 13:] = rng.standard_normal(y["audio"][:, 13:].shape) * 50
    seq_x, mask = encode(model, x, MODALITIES)
    seq_y, _ = encode(model, y, MODALITIES)
    real = mask.asnumpy().astype(bool)
    assert real.sum() < real.size                      # there is padding to test against
    np.testing.assert_allclose(seq_x.asnumpy()[real], seq_y.asnumpy()[real], atol=1e-5)
    np.testing.assert_allclose(model.pool(seq_x).asnumpy(), model.pool(seq_y).asnumpy(), atol=1e-5)
    assert not np.allclose(seq_x.asnumpy()[~real], seq_y.asnumpy()[~real])   # padding itself did change
    towers = []
    for inputs in (x, y):
        text, t_mask = model.encode_text(Tensor(inputs["text_ids"]), Tensor(inputs["text_mask"]))
        aud, a_mask = model.encode_audio(Tensor(inputs["audio"]), Tensor(inputs["frame_mask"]))
        towers.append(np.concatenate([model.text_features(text, t_mask).asnumpy(),
                                      model.audio_features(aud, a_mask).asnumpy()], 1))
    np.testing.assert_allclose(towers[0], towers[1], atol=1e-5)          # contrastive towers ignore padding too


def test_masked_out_regions_in_feature_mode_never_change_real_outputs(pynative):
    cfg = model_config("tiny", ["model.image.mode=features"]).model
    model = build_model(cfg)
    model.set_train(False)
    x = model_inputs(cfg, batch=2)
    x["region_mask"] = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], np.int32)
    y = {k: v.copy() for k, v in x.items()}
    y["feats"][x["region_mask"] == 0] = 99.0
    y["boxes"][x["region_mask"] == 0] = 0.5
    seq_x, mask = encode(model, x, ("text", "image"), "features")
    seq_y, _ = encode(model, y, ("text", "image"), "features")
    real = mask.asnumpy().astype(bool)
    np.testing.assert_allclose(seq_x.asnumpy()[real], seq_y.asnumpy()[real], atol=1e-5)


@pytest.mark.parametrize("which", ["text_decoder", "image_decoder"])
def test_kv_cache_decoding_equals_full_decoding(tiny_cfg, which, pynative):
    model = build_model(tiny_cfg.model)
    model.set_train(False)
    decoder = getattr(model, which)
    rng = np.random.default_rng(0)
    memory = Tensor(rng.standard_normal((2, 9, tiny_cfg.model.cross.hidden)).astype(np.float32))
    memory_mask = Tensor(np.array([[1] * 9, [1] * 5 + [0] * 4], np.float32))
    tokens = rng.integers(0, decoder.vocab_size, (2, decoder.max_len)).astype(np.int32)
    full = decoder(Tensor(tokens), memory, memory_mask).asnumpy()
    state = decoder.prepare(memory, memory_mask)
    for t in range(decoder.max_len):
        logits, state = decoder.step(Tensor(tokens[:, t:t + 1]), Tensor(np.array([t], np.int32)), state)
        np.testing.assert_allclose(logits.asnumpy(), full[:, t], atol=2e-4, rtol=1e-4)


def test_dropout_is_off_in_eval_mode(pynative):
    cfg = model_config("tiny", ["model.dropout=0.3"]).model
    model = build_model(cfg)
    x = model_inputs(cfg)
    model.set_train(False)
    a, _ = encode(model, x, ("text", "image"))
    b, _ = encode(model, x, ("text", "image"))
    np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    model.set_train(True)
    c, _ = encode(model, x, ("text", "image"))
    assert not np.allclose(a.asnumpy(), c.asnumpy())


def test_half_precision_compute_runs_and_stays_close_to_fp32(tiny_cfg, pynative):
    ms.set_seed(0)
    fp32 = build_model(tiny_cfg.model)
    fp16 = set_compute_dtype(OPTModel(tiny_cfg.model), "float16")
    ms.load_param_into_net(fp16, {p.name: p for p in fp32.get_parameters()})
    for m in (fp32, fp16):
        m.set_train(False)
    x = model_inputs(tiny_cfg.model)
    a, _ = encode(fp32, x, MODALITIES)
    b, _ = encode(fp16, x, MODALITIES)
    assert all(p.dtype == ms.float32 for p in fp16.get_parameters())          # fp32 master weights
    np.testing.assert_allclose(a.asnumpy(), b.asnumpy().astype(np.float32), atol=5e-2)


class AllHeadsLoss(nn.Cell):
    """A loss that uses every part of the model once: each head on the fused sequence, both decoders, the towers
    with masked image/audio tokens (so the mask embeddings are trained)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, ids, text_mask, images, image_masked, audio, frame_mask, audio_masked, labels):
        m = self.model
        text, t_mask = m.encode_text(ids, text_mask)
        image, i_mask = m.encode_image(images, image_masked)
        aud, a_mask = m.encode_audio(audio, frame_mask, audio_masked)
        seq, mask = m.fuse(text, t_mask, image, i_mask, aud, a_mask)
        ce = ops.cross_entropy
        loss = ce(m.mlm_logits(seq[:, :4]).reshape(-1, m.cfg.text.vocab_size), ids[:, :4].reshape(-1))
        loss += ((m.image_regression_head(seq[:, 12:15]) - 1.0) ** 2).mean()
        loss += ((m.audio_regression_head(seq[:, -3:]) + 1.0) ** 2).mean()
        loss += ce(m.matching_logits(text, t_mask, image, i_mask, aud, a_mask), labels)
        loss += ce(m.pair_logits(text, t_mask, image, i_mask), labels % 2)
        t, i, a = m.text_features(text, t_mask), m.image_features(image), m.audio_features(aud, a_mask)
        loss += -(ops.log_softmax(ops.matmul(t, i.T) * m.contrastive.scale(), -1).diagonal().mean())
        loss += -(ops.log_softmax(ops.matmul(t, a.T) * m.contrastive.scale(), -1).diagonal().mean())
        dec = m.text_decoder(ids, seq, mask)
        loss += ce(dec.reshape(-1, dec.shape[-1]), ids.reshape(-1))
        img_tokens = labels.reshape(-1, 1).broadcast_to((labels.shape[0], m.image_decoder.max_len))
        dec = m.image_decoder(img_tokens, seq, mask)
        loss += ce(dec.reshape(-1, dec.shape[-1]), img_tokens.reshape(-1))
        return loss


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_training_step_reaches_every_parameter_and_lowers_the_loss(stem):
    tiny_cfg = model_config("tiny", [f"model.image.stem={stem}"])
    ms.set_seed(0)
    model = build_model(tiny_cfg.model)
    model.set_train(True)
    net = AllHeadsLoss(model)
    x = model_inputs(tiny_cfg.model, batch=4, text_len=9, audio_frames=20)
    rng = np.random.default_rng(0)
    n_patches = (32 // 8) ** 2
    inputs = [Tensor(x["text_ids"]), Tensor(x["text_mask"]), Tensor(x["images"]),
              Tensor((rng.random((4, n_patches)) < 0.3).astype(np.float32)), Tensor(x["audio"]),
              Tensor(x["frame_mask"]), Tensor(np.array([[1, 0, 0, 0, 0, 1, 0, 0]] * 4, np.float32)),
              Tensor(np.array([0, 1, 4, 3], np.int32))]
    params = net.trainable_params()

    class Step(nn.Cell):
        def __init__(self):
            super().__init__()
            self.opt = nn.Adam(params, learning_rate=3e-3)
            self.grad_fn = ms.value_and_grad(net, None, self.opt.parameters)

        def construct(self, *args):
            loss, grads = self.grad_fn(*args)
            self.opt(grads)
            return loss, grads

    step = Step()
    loss, grads = step(*inputs)
    silent = [p.name for p, g in zip(params, grads) if not np.any(g.asnumpy())]
    assert not silent, f"parameters without gradient: {silent}"
    losses = [float(loss.asnumpy())] + [float(step(*inputs)[0].asnumpy()) for _ in range(7)]
    assert losses[-1] < 0.8 * losses[0], losses
