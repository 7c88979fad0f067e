"""The original-math model options (config/defaults.yaml; the released OPT's choices): ReLU scaled-sinusoid decoders
without final LayerNorms or output bias, the ReLU MLM transform, the image global token kept out of the fused sequence,
and the model zoo's two-LayerNorm region embedding. Expected values are NumPy written from the reference
(opt_original_model.md sections 1.4, 1.8, 1.9)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.models.layers import sinusoid_table
from src.models.opt import build_model
from tests.helpers import model_config, model_inputs

ORIGINAL_DECODER = ["activation=relu", "positions=sinusoid", "sinusoid_length=40", "final_norm=false",
                    "memory_final_norm=false", "output_bias=false", "dropout=0.2"]


def original_cfg(extra=()):
    overrides = [f"model.{d}.{o}" for d in ("text_decoder", "image_decoder") for o in ORIGINAL_DECODER]
    return model_config("tiny", overrides + ["model.heads.mlm_activation=relu", "model.image.fuse_global_token=false",
                                            *extra]).model


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


def np_layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def test_sinusoid_table_is_the_original_position_encoding():
    table = sinusoid_table(150, 8)
    half = 4
    for p in (0, 1, 49, 149):
        for i in range(half):
            timescale = 1e4 ** (i / (half - 1))
            assert table[p, i] == pytest.approx(np.sin(p / timescale), abs=1e-6)
            assert table[p, half + i] == pytest.approx(np.cos(p / timescale), abs=1e-6)


def test_original_decoder_has_no_position_bias_or_final_norm_parameters():
    model = build_model(original_cfg())
    names = [p.name for p in model.text_decoder.get_parameters()]
    assert not any(n.endswith(("output_bias", "position_embeddings.embedding_table")) for n in names)
    assert not any(".final_norm." in n for n in names)
    assert any(".memory_encoder.blocks.0.ffn.fc1.weight" in n for n in names)


def np_decoder_first_step(dec, token, memory, memory_mask, hidden):
    """One decoding step at position 0 of the original: E[token] x sqrt(d) + sinusoid[0], pre-LN blocks with ReLU,
    no final LayerNorm, logits through the tied table without bias (memory encoder without final LN)."""
    p = {k: v.asnumpy() for k, v in dec.parameters_and_names()}
    get = lambda name: p[name]  # noqa: E731
    heads = dec.heads

    def attn(prefix, x, kv, bias):
        q = x @ get(prefix + ".query.weight").T + get(prefix + ".query.bias")
        k = kv @ get(prefix + ".key.weight").T + get(prefix + ".key.bias")
        v = kv @ get(prefix + ".value.weight").T + get(prefix + ".value.bias")
        b, lq, d = q.shape[0], q.shape[1], q.shape[2] // heads
        q, k, v = (t.reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, lq, heads * d)
        return ctx @ get(prefix + ".out.weight").T + get(prefix + ".out.bias")

    def ffn(prefix, x):
        h = np.maximum(x @ get(prefix + ".fc1.weight").T + get(prefix + ".fc1.bias"), 0.0)
        return h @ get(prefix + ".fc2.weight").T + get(prefix + ".fc2.bias")

    def ln(prefix, x):
        return np_layer_norm(x, get(prefix + ".gamma"), get(prefix + ".beta"))

    pre = next(k for k in p if k.endswith("memory_proj.weight")).rsplit("memory_proj.weight", 1)[0]
    bias = ((1.0 - memory_mask) * -1e4)[:, None, None, :]
    mem = memory @ get(pre + "memory_proj.weight").T + get(pre + "memory_proj.bias")
    i = 0
    while pre + f"memory_encoder.blocks.{i}.ln1.gamma" in p:
        blk = pre + f"memory_encoder.blocks.{i}"
        mem = mem + attn(blk + ".attn", ln(blk + ".ln1", mem), ln(blk + ".ln1", mem), bias)
        mem = mem + ffn(blk + ".ffn", ln(blk + ".ln2", mem))
        i += 1
    table = get(pre + "token_embeddings.embedding_table")
    x = table[token][:, None] * np.sqrt(hidden) + sinusoid_table(40, hidden)[0]
    i = 0
    while pre + f"blocks.{i}.ln1.gamma" in p:
        blk = pre + f"blocks.{i}"
        h = ln(blk + ".ln1", x)
        x = x + attn(blk + ".self_attn", h, h, 0.0)
        x = x + attn(blk + ".cross_attn", ln(blk + ".ln2", x), mem, bias)
        x = x + ffn(blk + ".ffn", ln(blk + ".ln3", x))
        i += 1
    return x[:, 0] @ table.T


def test_original_decoder_step_equals_numpy_and_kv_cache_equals_full_decoding():
    cfg = original_cfg()
    ms.set_seed(1)
    model = build_model(cfg)
    model.set_train(False)
    dec = model.text_decoder
    rng = np.random.default_rng(0)
    memory = rng.standard_normal((2, 9, cfg.cross.hidden)).astype(np.float32)
    memory_mask = np.array([[1] * 9, [1] * 5 + [0] * 4], np.float32)
    tokens = rng.integers(0, dec.vocab_size, (2, dec.max_len)).astype(np.int32)
    full = dec(Tensor(tokens), Tensor(memory), Tensor(memory_mask)).asnumpy()
    expected = np_decoder_first_step(dec, tokens[:, 0], memory, memory_mask, cfg.text_decoder.hidden)
    np.testing.assert_allclose(full[:, 0], expected, rtol=1e-4, atol=1e-4)
    state = dec.prepare(Tensor(memory), Tensor(memory_mask))
    for t in range(dec.max_len):
        logits, state = dec.step(Tensor(tokens[:, t:t + 1]), Tensor(np.array([t], np.int32)), state)
        np.testing.assert_allclose(logits.asnumpy(), full[:, t], atol=2e-4, rtol=1e-4)


def test_mlm_transform_relu():
    model = build_model(original_cfg())
    model.set_train(False)
    x = np.random.default_rng(0).standard_normal((3, model.cfg.cross.hidden)).astype(np.float32)
    head = model.mlm_head
    h = np.maximum(x @ head.transform.weight.asnumpy().T + head.transform.bias.asnumpy(), 0.0)
    h = np_layer_norm(h, head.layer_norm.gamma.asnumpy(), head.layer_norm.beta.asnumpy())
    table = model.text_encoder.word_embeddings.embedding_table.asnumpy()
    np.testing.assert_allclose(model.mlm_logits(Tensor(x)).asnumpy(), h @ table.T + head.bias.asnumpy(),
                               rtol=1e-4, atol=1e-5)


def test_hidden_global_token_never_reaches_the_fused_sequence():
    cfg = original_cfg()
    model = build_model(cfg)
    model.set_train(False)
    x = model_inputs(cfg, batch=2)
    text, t_mask = model.encode_text(Tensor(x["text_ids"]), Tensor(x["text_mask"]))
    image, i_mask = model.encode_image(Tensor(x["images"]))
    assert (i_mask.asnumpy()[:, 0] == 0).all() and (i_mask.asnumpy()[:, 1:] == 1).all()
    seq, mask = model.fuse(text, t_mask, image, i_mask)
    changed = image.asnumpy().copy()
    changed[:, 0] += 5.0
    seq2, _ = model.fuse(text, t_mask, Tensor(changed), i_mask)
    real = mask.asnumpy().astype(bool)
    np.testing.assert_allclose(seq.asnumpy()[real], seq2.asnumpy()[real], atol=1e-5)


def test_two_norm_region_embedding():
    cfg = original_cfg(["model.image.mode=features", "model.image.region_embedding=two_norms", "model.image.layers=0",
                        "model.image.hidden=48"])
    model = build_model(cfg)
    model.set_train(False)
    assert not hasattr(model.image_embed, "proj")
    x = model_inputs(cfg, batch=2)
    tokens, mask = model.encode_image(Tensor(x["images"]))
    enc = model.image_encoder
    f, b = x["images"][..., :cfg.image.feature_dim], x["images"][..., cfg.image.feature_dim:-1]
    expected = (np_layer_norm(f @ enc.feature_embed.weight.asnumpy().T + enc.feature_embed.bias.asnumpy(),
                              enc.feature_norm.gamma.asnumpy(), enc.feature_norm.beta.asnumpy())
                + np_layer_norm(b @ enc.box_embed.weight.asnumpy().T + enc.box_embed.bias.asnumpy(),
                                enc.box_norm.gamma.asnumpy(), enc.box_norm.beta.asnumpy())
                + enc.position_embeddings.embedding_table.asnumpy()[1:])
    np.testing.assert_allclose(tokens.asnumpy()[:, 1:], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(mask.asnumpy()[:, 1:], x["images"][..., -1])
    assert (mask.asnumpy()[:, 0] == 0).all()


def test_decoder_dropout_is_its_own_and_only_in_that_decoder():
    """model.text_decoder.dropout (the released OPT: 0.2) sets every hidden and attention dropout of that decoder and
    its memory encoder, whatever model.dropout says; null keeps the model's."""
    from mindspore import nn
    cfg = model_config("tiny", ["model.dropout=0.0", "model.attention_dropout=0.0",
                                "model.text_decoder.dropout=0.2"]).model
    model = build_model(cfg)
    rates = {}
    for name, cell in model.cells_and_names():
        if isinstance(cell, nn.Dropout):
            rates[name] = cell.p if cell.p is not None else 1.0 - cell.keep_prob
    assert rates and all(name.startswith("text_decoder.") for name in rates), sorted(rates)
    assert all(abs(p - 0.2) < 1e-6 for p in rates.values())
    dec = model.text_decoder
    assert any(n.startswith("text_decoder.memory_encoder.") for n in rates)
    assert any(n.startswith("text_decoder.blocks.0.self_attn.") for n in rates)    # attention dropout too
    assert "text_decoder.dropout" in rates                                         # the input embedding's
    rng = np.random.default_rng(0)
    memory = Tensor(rng.standard_normal((2, 5, cfg.cross.hidden)).astype(np.float32))
    memory_mask = Tensor(np.ones((2, 5), np.float32))
    tokens = Tensor(rng.integers(1, dec.vocab_size, (2, dec.max_len)).astype(np.int32))
    dec.set_train(True)
    assert not np.allclose(dec(tokens, memory, memory_mask).asnumpy(), dec(tokens, memory, memory_mask).asnumpy())
    dec.set_train(False)
    first = dec(tokens, memory, memory_mask).asnumpy()
    np.testing.assert_array_equal(first, dec(tokens, memory, memory_mask).asnumpy())


def test_features_mode_regression_targets_are_the_input_features():
    """MVM / MAM with image.mode and audio.mode features regress onto the standardised input region / frame features
    (what the heads are sized to), and padded region slots never count in the MVM loss."""
    from src.tasks.pretrain import build_task
    cfg = model_config("tiny", ["model.image.mode=features", "model.image.feature_dim=24", "model.image.max_regions=6",
                                "model.image.layers=0", "model.audio.mode=features", "model.audio.feature_dim=20",
                                "model.audio.layers=0"])
    model = build_model(cfg.model)
    model.set_train(False)
    x = model_inputs(cfg.model, batch=2)
    feats = x["images"][..., :24]
    np.testing.assert_array_equal(model.image_regression_target(Tensor(x["images"])).asnumpy(), feats)
    np.testing.assert_array_equal(model.audio_regression_target(Tensor(x["audio"]), Tensor(x["frame_mask"])).asnumpy(),
                                  x["audio"])
    hidden = Tensor(np.ones((2, 3, cfg.model.cross.hidden), np.float32))
    assert model.image_regression_head(hidden).shape == (2, 3, 24)
    assert model.audio_regression_head(hidden).shape == (2, 3, 20)

    mvm = build_task("mvm", model, cfg.pretrain, has_audio=False)
    mvm.set_train(False)
    masked = np.zeros((2, 6), np.float32)
    masked[:, [1, 3]] = 1.0
    with_pad = masked.copy()
    with_pad[:, 5] = 1.0                       # model_inputs leaves the last region slot as padding
    assert (x["images"][:, 5, -1] == 0).all()
    inputs = [Tensor(x["text_ids"]), Tensor(x["text_mask"]), Tensor(x["images"])]
    loss = float(mvm(*inputs, Tensor(masked)).asnumpy())
    assert np.isfinite(loss)
    assert float(mvm(*inputs, Tensor(with_pad)).asnumpy()) == pytest.approx(loss, rel=1e-6)
    mam = build_task("mam", model, cfg.pretrain, has_audio=True)
    mam.set_train(False)
    audio_masked = np.zeros((2, cfg.model.audio.max_frames), np.float32)
    audio_masked[:, :2] = 1.0
    assert np.isfinite(float(mam(*inputs, Tensor(audio_masked), Tensor(x["audio"]), Tensor(x["frame_mask"])).asnumpy()))
