"""Released OPT checkpoints: original-format files built from the reference inventory (tests/data/released_opt, copied
from the reference listing of every stored key: names, shapes and layouts, one layer per stack, random values, some
fp16, plus the training state a MindSpore training cell writes) are converted with `python -m src.weights.convert`,
loaded strictly, and compared with a NumPy implementation of the original forward written from the reference
(opt_original_model.md sections 1.3-1.9, opt_released_checkpoints.md): embeddings with the shared type table, one
ViT block with [in, out] projections, one cross-modal block, pooler and ITM logits, MLM logits with the tied table,
decoder steps with scaled sinusoids and ReLU, and greedy tokens. Every key of the inventory is mapped or dropped
with a reason."""
import json
import os
import re

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.errors import UserError
from src.weights import convert
from src.models.opt import build_model
from src.weights.checkpoint import init_from_checkpoint
from tests.helpers import ROOT, model_config

pytestmark = pytest.mark.slow

DATA = os.path.join(ROOT, "tests", "data", "released_opt")
LISTINGS = {"zidongtaichu": "zidongtaichu_opt_1b_keys.txt", "modelzoo": "modelzoo_caption_keys.txt"}
CONFIGS = {"zidongtaichu": "config/model/opt_1b_released.yaml", "modelzoo": "config/model/opt_modelzoo_caption.yaml"}
ONE_LAYER = {"zidongtaichu": ["model.cross.layers=1", "model.image.layers=1", "model.text_decoder.memory_layers=1",
                              "model.text_decoder.layers=1", "model.image_decoder.memory_layers=1",
                              "model.image_decoder.layers=1"],
             "modelzoo": ["model.cross.layers=1", "model.text_decoder.memory_layers=1", "model.text_decoder.layers=1",
                          "model.image_decoder.layers=1"]}
TRAINING_STATE = ["global_step", "scale_sense", "current_iterator_step", "last_overflow_iterator_step"]
LINE = re.compile(r"^(\S+) (?:(\S+) )?\(([\d, ]*)\)$")


def inventory(source):
    """{stored key: shape} of the reference listing (a key listed twice counts once)."""
    keys = {}
    with open(os.path.join(DATA, LISTINGS[source]), encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            first, second, shape = LINE.match(line.strip()).groups()
            keys[second or first] = tuple(int(d) for d in shape.split(",") if d.strip())
    return keys


def random_original(source, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in inventory(source).items():
        if key.endswith(".gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            value = 0.1 * rng.standard_normal(shape)
        elif "embedding" in key or key == "cls.predictions.decoder.weight" or "pos_embedding" in key:
            value = 0.5 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(max(shape))
        dtype = np.float16 if "tfm_embedding_lookup" in key else np.float32   # fp16 tables exercise the cast
        out[key] = value.astype(dtype)
    return out


def write_original(tensors, path, training_state=True):
    items = [{"name": k, "data": Tensor(v)} for k, v in tensors.items()]
    if training_state:
        some = next(k for k in tensors if k.endswith("pooler.dense.weight"))
        for prefix in ("adam_m.", "adam_v.", "accu_grads."):
            items.append({"name": prefix + some, "data": Tensor(np.zeros_like(tensors[some], np.float32))})
        items += [{"name": k, "data": Tensor(np.array([3], np.int32))} for k in TRAINING_STATE]
    ms.save_checkpoint(items, path)


@pytest.fixture(scope="module", params=["zidongtaichu", "modelzoo"])
def converted(request, tmp_path_factory):
    source = request.param
    folder = tmp_path_factory.mktemp(source)
    tensors = random_original(source)
    path = str(folder / "original.ckpt")
    write_original(tensors, path)
    out = str(folder / "converted")
    assert convert.main(["--source", source, path, "--config", CONFIGS[source], "--out", out,
                         "--set", *ONE_LAYER[source]]) == 0
    cfg = model_config(os.path.splitext(os.path.basename(CONFIGS[source]))[0], ONE_LAYER[source]).model
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = build_model(cfg)
    assert init_from_checkpoint(model, out) == []          # strict: no missing and no unexpected key
    model.set_train(False)
    with open(os.path.join(out, "load_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    yield {"source": source, "tensors": {k: v.astype(np.float32) for k, v in tensors.items()}, "model": model,
           "cfg": cfg, "report": report, "path": path, "out": out}
    ms.set_context(mode=ms.GRAPH_MODE)


# ----- NumPy reference of the original forward -----

def ln(x, p, prefix, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p[prefix + ".gamma"] + p[prefix + ".beta"]


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def relu(x):
    return np.maximum(x, 0.0)


def linear(x, p, prefix, in_out=False):
    """nn.Dense / the repos' Linear store [out, in]; MindSpore 1.x's built-in _Linear stores [in, out]."""
    w = p[prefix + ".weight"]
    return x @ (w if in_out else w.T) + p[prefix + ".bias"]


def attention(p, prefix, x, memory, bias, heads, in_out):
    q, k, v = (linear(t, p, f"{prefix}.dense{i}") for i, t in ((1, x), (2, memory), (3, memory)))
    b, lq, d = q.shape[0], q.shape[1], q.shape[2] // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    ctx = (scores / scores.sum(-1, keepdims=True)) @ v
    return linear(ctx.transpose(0, 2, 1, 3).reshape(b, lq, -1), p, prefix + ".projection", in_out)


def encoder_block(p, prefix, x, bias, heads, in_out, act):
    h = x + attention(p, prefix + ".attention", ln(x, p, prefix + ".layernorm1"), ln(x, p, prefix + ".layernorm1"),
                      bias, heads, in_out)
    ffn = linear(act(linear(ln(h, p, prefix + ".layernorm2"), p, prefix + ".output.mapping", in_out)), p,
                 prefix + ".output.projection", in_out)
    return h + ffn


def mask_bias(mask):
    return ((1.0 - mask) * -1e4)[:, None, None, :]


def sinusoid(length, depth):
    """The original decoders' position_encoding (sin || cos halves, timescales 1 .. 1e4)."""
    half = depth // 2
    inv = np.exp(np.arange(half) * -(np.log(1e4) / (half - 1)))
    angle = np.arange(length)[:, None] * inv[None]
    return np.concatenate([np.sin(angle), np.cos(angle)], 1)


def reference_decoder_logits(p, prefix, seq, mask, tokens, heads, length):
    """txt_output: LinearEmbedding -> tfm_encoder (no final LN) -> decoder over `tokens` (BOS 0 first) -> tied logits
    over the full table. Returns logits (B, T, V)."""
    bias = mask_bias(mask)
    mem = linear(seq, p, prefix + ".LinearEmbedding")
    mem = encoder_block(p, prefix + ".tfm_encoder.blocks.0", mem, bias, heads, False, relu)
    table = p[prefix + ".tfm_embedding_lookup.embedding_table"]
    width = table.shape[1]
    t = tokens.shape[1]
    y = table[tokens] * np.sqrt(width) + sinusoid(length, width)[:t]
    causal = np.triu(np.full((t, t), -1e4), 1)[None, None]
    blk = prefix + ".tfm_decoder.blocks.0"
    h = ln(y, p, blk + ".layernorm1")
    y = y + attention(p, blk + ".attention", h, h, causal, heads, False)
    y = y + attention(p, blk + ".cross_attention", ln(y, p, blk + ".cross_attention_layernorm"), mem, bias, heads,
                      False)
    y = y + linear(relu(linear(ln(y, p, blk + ".layernorm2"), p, blk + ".output.mapping")), p,
                   blk + ".output.projection")
    return y @ table.T


def reference_text(p, ids):
    types = p["uniter.embeddings.token_type_embeddings.embedding_table"]
    word = p.get("cls.predictions.decoder.weight", p.get("uniter.embeddings.word_embeddings.embedding_table"))
    x = word[ids] + p["uniter.embeddings.position_embeddings.embedding_table"][:ids.shape[1]] + types[0]
    return ln(x, p, "uniter.embeddings.layernorm")


def reference_vit_image(p, images):
    """Host patchify (C, py, px), a zero pad row at index 196, ViT (one block, [in,out]), img_linear -> LN, image
    positions + type 1 -> LN. Returns the 196 patch embeddings (the pad row is gathered out)."""
    b, c, s, _ = images.shape
    g, ps = s // 32, 32
    patches = images.reshape(b, c, g, ps, g, ps).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * ps * ps)
    rows = np.concatenate([patches, np.zeros((b, 1, patches.shape[2]))], 1)
    x = linear(rows, p, "uniter.img_embeddings.vit.stem.patch_to_embedding.dense")
    x = x + p["uniter.img_embeddings.vit.encoder_pos_embedding"]
    x = encoder_block(p, "uniter.img_embeddings.vit.encoder.blocks.0", x, 0.0, 12, True, gelu)
    x = ln(x, p, "uniter.img_embeddings.vit.norm")
    x = ln(x @ p["feat_regress.weight"].T + p["uniter.img_embeddings.img_linear.bias"], p,
           "uniter.img_embeddings.img_layer_norm")
    types = p["uniter.embeddings.token_type_embeddings.embedding_table"]
    x = x + p["uniter.img_embeddings.position_embeddings.embedding_table"][:x.shape[1]] + types[1]
    return ln(x, p, "uniter.img_embeddings.LayerNorm")[:, :g * g]


def reference_region_image(p, feats, boxes):
    types = p["uniter.embeddings.token_type_embeddings.embedding_table"]
    x = (ln(linear(feats, p, "uniter.img_embeddings.img_linear"), p, "uniter.img_embeddings.img_layer_norm")
         + ln(linear(boxes, p, "uniter.img_embeddings.pos_linear"), p, "uniter.img_embeddings.pos_layer_norm")
         + types[1])
    return ln(x, p, "uniter.img_embeddings.LayerNorm")


def reference_audio(p, audio):
    types = p["uniter.embeddings.token_type_embeddings.embedding_table"]
    w = p.get("audio_feat_regress.weight", p.get("uniter.audio_embeddings.audio_linear.weight"))
    x = ln(audio @ w.T + p["uniter.audio_embeddings.audio_linear.bias"], p, "uniter.audio_embeddings.audio_layer_norm")
    x = x + p["uniter.audio_embeddings.position_embeddings.embedding_table"][:audio.shape[1]] + types[2]
    return ln(x, p, "uniter.audio_embeddings.LayerNorm")


def assert_close(ours, reference):
    """Equal within 1e-4 relative (to the reference's largest magnitude where single values are near 0)."""
    reference = np.asarray(reference, np.float64)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def inputs(cfg, source, seed=1):
    rng = np.random.default_rng(seed)
    b, lt = 2, cfg.text.max_len
    ids = rng.integers(1000, cfg.text.vocab_size, (b, lt)).astype(np.int32)
    text_mask = np.ones((b, lt), np.float32)
    text_mask[1, lt - 4:] = 0
    frames = cfg.audio.max_frames
    audio = rng.standard_normal((b, frames, cfg.audio.feature_dim)).astype(np.float32)
    frame_mask = np.ones((b, frames), np.float32)
    frame_mask[0, frames - 3:] = 0
    x = {"ids": ids, "text_mask": text_mask, "audio": audio, "frame_mask": frame_mask}
    if source == "zidongtaichu":
        x["images"] = rng.standard_normal((b, 3, cfg.image.image_size, cfg.image.image_size)).astype(np.float32)
    else:
        from src.data.regions import pack_regions
        r = cfg.image.max_regions
        feats = rng.standard_normal((b, r, cfg.image.feature_dim)).astype(np.float32)
        boxes = rng.random((b, r, cfg.image.box_dim)).astype(np.float32)
        counts = (r, r - 6)
        x["images"] = np.stack([pack_regions(feats[i, :n], boxes[i, :n], r) for i, n in enumerate(counts)])
        x["feats"], x["boxes"] = feats, boxes
        x["region_mask"] = x["images"][..., -1]
    return x


def ours_and_reference(c):
    """Fused sequence of ours (its real positions) and of the reference, in the same order."""
    m, p, cfg, source = c["model"], c["tensors"], c["cfg"], c["source"]
    x = inputs(cfg, source)
    text, t_mask = m.encode_text(Tensor(x["ids"]), Tensor(x["text_mask"]))
    image, i_mask = m.encode_image(Tensor(x["images"]))
    audio, a_mask = m.encode_audio(Tensor(x["audio"]), Tensor(x["frame_mask"]))
    seq, mask = m.fuse(text, t_mask, image, i_mask, audio, a_mask)
    if source == "zidongtaichu":
        ref_image, image_mask = reference_vit_image(p, x["images"]), np.ones((2, 196))
    else:
        ref_image, image_mask = reference_region_image(p, x["feats"], x["boxes"]), x["region_mask"]
    ref = np.concatenate([reference_text(p, x["ids"]), ref_image, reference_audio(p, x["audio"])], 1)
    ref_mask = np.concatenate([x["text_mask"], image_mask, x["frame_mask"]], 1)
    heads = cfg.cross.heads
    ref_seq = encoder_block(p, "uniter.encoder.encoder.blocks.0", ref, mask_bias(ref_mask), heads,
                            source == "zidongtaichu", gelu)
    ours_mask = mask.asnumpy()
    # ours: [text | global (hidden) + image tokens | audio]; the reference has no global token
    keep = np.ones(ours_mask.shape[1], bool)
    keep[cfg.text.max_len] = False
    assert (ours_mask[:, cfg.text.max_len] == 0).all()
    np.testing.assert_array_equal(ours_mask[:, keep], ref_mask)
    return x, seq, mask, seq.asnumpy()[:, keep], ref_seq, ref_mask


def test_every_inventory_key_is_mapped_or_dropped_with_a_reason(converted):
    rows = converted["report"]["records"]
    by_source = {}
    for row in rows:
        if row["source"]:
            by_source.setdefault(row["source"], []).append(row)
    for key in list(inventory(converted["source"])) + TRAINING_STATE + ["adam_m.uniter.pooler.dense.weight"]:
        actions = [r["action"] for r in by_source.get(key, []) if r["action"] != "cast"]
        assert actions, f"{key} is neither mapped nor dropped"
        for r in by_source[key]:
            if r["action"] == "dropped":
                assert r["detail"] and r["ours"] is None
            elif r["action"] != "cast":
                assert r["ours"], key
    assert all(r["detail"] for r in rows if r["action"] in ("dropped", "initialised"))
    casts = {r["source"] for r in rows if r["action"] == "cast"}
    assert "txt_output.tfm_embedding_lookup.embedding_table" in casts
    initialised = {r["ours"] for r in rows if r["action"] == "initialised"}
    assert "text_embed.proj.weight" in initialised and "itm_head.gain" in initialised
    assert os.path.isfile(os.path.join(converted["out"], "load_report.md"))


def test_fused_sequence_pooler_itm_and_mlm_equal_the_reference(converted):
    c = converted
    m, p, cfg = c["model"], c["tensors"], c["cfg"]
    x, seq, mask, ours, ref, ref_mask = ours_and_reference(c)
    real = ref_mask.astype(bool)
    assert_close(ours[real], ref[real])
    ref_pooled = np.tanh(linear(ref[:, 0], p, "uniter.pooler.dense"))
    assert_close(m.pool(seq).asnumpy(), ref_pooled)
    if c["source"] != "zidongtaichu":
        return
    text, t_mask = m.encode_text(Tensor(x["ids"]), Tensor(x["text_mask"]))
    image, i_mask = m.encode_image(Tensor(x["images"]))
    audio, a_mask = m.encode_audio(Tensor(x["audio"]), Tensor(x["frame_mask"]))
    itm = m.matching_logits(text, t_mask, image, i_mask, audio, a_mask).asnumpy()
    assert_close(itm, linear(ref_pooled, p, "itm_output"))
    positions = np.array([[1, 5, 9], [2, 3, 40]])
    hidden = ref[np.arange(2)[:, None], positions]
    h = ln(relu(linear(hidden, p, "cls.predictions.transform.dense")), p, "cls.predictions.transform.LayerNorm")
    ref_mlm = h @ p["cls.predictions.decoder.weight"].T + p["cls.predictions.decoder.bias"]
    ours_mlm = m.mlm_logits(Tensor(seq.asnumpy()[np.arange(2)[:, None], positions])).asnumpy()
    assert_close(ours_mlm, ref_mlm[..., :cfg.text.vocab_size])


def test_decoder_steps_and_greedy_tokens_equal_the_reference(converted):
    from src.inference.generation import generate
    c = converted
    m, p, cfg = c["model"], c["tensors"], c["cfg"]
    _, seq, mask, _, ref_seq_compact, ref_mask = ours_and_reference(c)
    # the reference's memory: its own fused sequence; ours decodes from ours (equal on real positions, tested above)
    length = cfg.text_decoder.sinusoid_length
    heads = cfg.text_decoder.heads
    vocab = cfg.text.vocab_size
    state = m.text_decoder.prepare(seq, mask)
    logits, _ = m.text_decoder.step(Tensor(np.full((2, 1), 101, np.int32)), Tensor(np.array([0], np.int32)), state)
    ref = reference_decoder_logits(p, "txt_output", ref_seq_compact, ref_mask, np.zeros((2, 1), np.int64), heads,
                                   length)[:, 0]
    expected = ref[:, :vocab].copy()
    expected[:, [101, 102]] = ref[:, [0]]
    assert_close(logits.asnumpy(), expected)

    steps = 4
    tokens, _ = generate(m.text_decoder, seq, mask, bos_id=101, eos_id=102, pad_id=0, max_len=steps)
    # the reference's greedy choice among the ids ours can emit: BERT-Chinese ids, its 0 (EOS) standing for [SEP]
    history = np.zeros((2, 1), np.int64)
    ref_tokens = []
    for t in range(steps):
        step_logits = reference_decoder_logits(p, "txt_output", ref_seq_compact, ref_mask, history, heads,
                                               length)[:, -1]
        allowed = step_logits[:, :vocab].copy()
        allowed[:, [101, 102]] = -np.inf
        if t == 0:
            allowed[:, 0] = -np.inf     # generation's min_len 1: no EOS as the first token
        choice = np.argmax(allowed, 1)
        ref_tokens.append(np.where(choice == 0, 102, choice))
        history = np.concatenate([history, choice[:, None]], 1)
    ref_tokens = np.stack(ref_tokens, 1)
    for row in range(2):
        got = list(tokens[row])
        want = list(ref_tokens[row])
        if 102 in want:
            want = want[:want.index(102) + 1]
        assert got[:len(want)] == want


def test_image_decoder_step_equals_the_reference(converted):
    c = converted
    if c["source"] != "zidongtaichu":
        pytest.skip("the model-zoo checkpoint has no image decoder")
    m, p, cfg = c["model"], c["tensors"], c["cfg"]
    _, seq, mask, _, ref_seq, ref_mask = ours_and_reference(c)
    dec = m.image_decoder
    state = dec.prepare(seq, mask)
    codes = [5, 77]
    logits = None
    for t, token in enumerate([1, codes[0] + 3, codes[1] + 3]):
        logits, state = dec.step(Tensor(np.full((2, 1), token, np.int32)), Tensor(np.array([t], np.int32)), state)
    history = np.array([[0, codes[0] + 1, codes[1] + 1]] * 2)
    ref = reference_decoder_logits(p, "img_output", ref_seq, ref_mask, history, cfg.image_decoder.heads,
                                   cfg.image_decoder.sinusoid_length)[:, -1]
    n = ref.shape[1] - 1
    assert_close(logits.asnumpy()[:, 3:3 + n], ref[:, 1:])   # ours code c + 3 <-> theirs c + 1
    assert_close(logits.asnumpy()[:, [1, 2]], ref[:, [0, 0]])


def test_wrong_source_unknown_keys_and_slices_are_refused(tmp_path):
    tensors = random_original("modelzoo")
    path = str(tmp_path / "a.ckpt")
    small = {k: v for k, v in tensors.items() if not k.startswith("txt_output.tfm_")}
    write_original(small, path, training_state=False)
    cfg = ["--config", CONFIGS["modelzoo"], "--out", str(tmp_path / "o"), "--set", *ONE_LAYER["modelzoo"]]
    with pytest.raises(UserError, match="pass --source modelzoo"):
        convert.main(["--source", "zidongtaichu", path, *cfg])
    sliced = dict(small)
    sliced["uniter.encoder.encoder.blocks.0.output.mapping.weight"] = \
        sliced["uniter.encoder.encoder.blocks.0.output.mapping.weight"][:768]
    write_original(sliced, path, training_state=False)
    with pytest.raises(UserError, match="model-parallel slice.*--strategy"):
        convert.main(["--source", "modelzoo", path, *cfg])
    with pytest.raises(UserError, match="strategy file"):
        convert.main(["--source", "modelzoo", str(tmp_path), *cfg])


def test_layer_counts_and_wrong_configs_are_named_in_one_line(tmp_path):
    """A stack with another layer count than the config's names the config key and the file's count (either way
    round); a config of the other release names the config this source needs."""
    small = {k: v for k, v in random_original("modelzoo").items() if not k.startswith("txt_output.tfm_")}
    block = "uniter.encoder.encoder.blocks.0."
    two = {**small, **{k.replace(".blocks.0.", ".blocks.1."): v for k, v in small.items() if k.startswith(block)}}
    path = str(tmp_path / "a.ckpt")
    out = ["--out", str(tmp_path / "o")]
    write_original(two, path, training_state=False)
    with pytest.raises(UserError, match=r"has 2 layer\(s\) in the checkpoint but model.cross.layers is 1 in the "
                                        r"config; set model.cross.layers to 2") as err:
        convert.main(["--source", "modelzoo", path, "--config", CONFIGS["modelzoo"], *out, "--set",
                      *ONE_LAYER["modelzoo"]])
    assert "\n" not in str(err.value)
    write_original(small, path, training_state=False)
    with pytest.raises(UserError, match=r"has 1 layer\(s\) in the checkpoint but model.cross.layers is 3"):
        convert.main(["--source", "modelzoo", path, "--config", CONFIGS["modelzoo"], *out, "--set",
                      *ONE_LAYER["modelzoo"], "model.cross.layers=3"])
    with pytest.raises(UserError, match="use config/model/opt_modelzoo_caption.yaml for --source modelzoo"):
        convert.main(["--source", "modelzoo", path, "--config", CONFIGS["zidongtaichu"], *out, "--set",
                      *ONE_LAYER["zidongtaichu"]])


def write_sliced(tensors, folder, ranks=2):
    """The per-rank files (rank_<r>/a.ckpt) and strategy file a model-parallel run with integrated_save=False
    writes: every 2-D weight split by rows over `ranks` devices, the rest replicated (node_strategy.proto)."""
    from mindspore.train import node_strategy_pb2
    strategy = node_strategy_pb2.ParallelStrategyMap()
    strategy.current_stage = 1
    split = {k for k, v in tensors.items() if v.ndim == 2 and v.shape[0] % ranks == 0}
    for name, value in tensors.items():
        item = strategy.parallel_layout_item.add()
        item.param_name = name
        layout = item.parallel_layouts
        layout.dev_matrix.add().dim.extend([ranks])
        layout.tensor_map.add().dim.extend([0] + [-1] * (value.ndim - 1) if name in split else [-1] * value.ndim)
        layout.param_split_shape.add()
        layout.indices_offset.add()
        layout.field, layout.opt_weight_shard_step, layout.opt_weight_shard_size = 0, 0, 0
    path = os.path.join(folder, "strategy.ckpt")
    with open(path, "wb") as f:
        f.write(strategy.SerializeToString())
    for r in range(ranks):
        os.makedirs(os.path.join(folder, "ckpt", f"rank_{r}"))
        part = {k: (np.split(v, ranks)[r] if k in split else v) for k, v in tensors.items()}
        write_original(part, os.path.join(folder, "ckpt", f"rank_{r}", "a.ckpt"), training_state=False)
    return os.path.join(folder, "ckpt"), path, len(split)


def test_model_parallel_slices_are_merged_with_the_strategy_file(tmp_path):
    """A checkpoint saved per rank converts, given its strategy file, to exactly what the whole file converts to
    (mindspore.transform_checkpoints merges the slices)."""
    from src.weights.checkpoint import load_checkpoint
    tensors = random_original("modelzoo", seed=5)
    whole = str(tmp_path / "whole.ckpt")
    write_original(tensors, whole, training_state=False)
    folder, strategy, n_split = write_sliced(tensors, str(tmp_path))
    assert n_split > 30
    args = ["--config", CONFIGS["modelzoo"], "--set", *ONE_LAYER["modelzoo"]]
    assert convert.main(["--source", "modelzoo", whole, "--out", str(tmp_path / "a"), *args]) == 0
    assert convert.main(["--source", "modelzoo", folder, "--strategy", strategy, "--out", str(tmp_path / "b"),
                         *args]) == 0
    a, _ = load_checkpoint(str(tmp_path / "a"))
    b, _ = load_checkpoint(str(tmp_path / "b"))
    assert set(a) == set(b)
    fresh = {r["ours"] for r in json.loads((tmp_path / "a" / "load_report.json").read_text())["records"]
             if r["action"] == "initialised" and "model's initialisation" in r["detail"]}
    for name in set(a) - fresh:                # parameters with no counterpart are random in each run
        np.testing.assert_array_equal(a[name].asnumpy(), b[name].asnumpy(), err_msg=name)
    with pytest.raises(UserError, match="strategy file"):
        convert.main(["--source", "modelzoo", folder, "--out", str(tmp_path / "c"), *args])


def bert_chinese_layout_vocab(path, size=21128):
    """A vocabulary with BERT-Chinese's special ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103)."""
    names = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    path.write_text("\n".join(names.get(i, f"[unused{i}]" if i < 100 else f"tok{i}") for i in range(size)) + "\n",
                    encoding="utf-8")
    return str(path)


def test_eval_caption_runs_a_converted_checkpoint_with_its_own_config(converted, tmp_path, capsys):
    """eval.py --task caption on the converted folder: the config (model_config.yaml inside it) gives the image size,
    region features or pixels, text length; greedy captions come out of the converted decoder."""
    import eval as eval_entry
    c = converted
    vocab = bert_chinese_layout_vocab(tmp_path / "vocab.txt")
    folder = tmp_path / "inputs"
    folder.mkdir()
    x = inputs(c["cfg"], c["source"])
    if c["source"] == "zidongtaichu":
        from PIL import Image
        pixels = np.random.default_rng(0).integers(0, 255, (500, 460, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "a.png")
    else:
        np.savez(folder / "a.npz", feat=x["feats"][0], boxes=x["boxes"][0])
    code = eval_entry.main(["--task", "caption", "--ckpt", c["out"], "--image", str(folder), "--strategy", "greedy",
                            "--max_len", "3", "--no_repeat_ngram", "0", "--out", str(tmp_path / "captions.jsonl"),
                            "--set", f"data.vocab={vocab}"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["image"].endswith(("a.png", "a.npz"))
    image = str(next(folder.iterdir()))
    assert eval_entry.main(["--task", "vqa", "--ckpt", c["out"], "--image", image, "--question", "tok2000 tok2001",
                            "--max_len", "3", "--set", f"data.vocab={vocab}"]) == 0

    # retrieval: the released models have no towers, so the cross-encoder scores every pair (mode itm)
    from src.data.build_mindrecord import build_mindrecord
    lines = []
    for i in range(3):
        name = f"r{i}"
        if c["source"] == "zidongtaichu":
            from PIL import Image
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (450, 450, 3), dtype=np.uint8)).save(
                folder / f"{name}.png")
            media = {"image": f"{name}.png"}
        else:
            np.savez(folder / f"{name}.npz", feat=x["feats"][i % 2], boxes=x["boxes"][i % 2])
            media = {"regions": f"{name}.npz"}
        lines.append(json.dumps({"id": name, **media, "captions": [f"tok{3000 + i} tok{3100 + i}"]}))
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = str(tmp_path / "test.mindrecord")
    build_mindrecord(str(folder / "test.jsonl"), record, vocab, workers=1, max_frames=8)
    out = tmp_path / "retrieval"
    assert eval_entry.main(["--task", "retrieval", "--ckpt", c["out"], "--data", record, "--mode", "itm",
                            "--out", str(out), "--set", f"data.vocab={vocab}", "data.use_audio=false"]) == 0
    results = json.loads((out / "retrieval.json").read_text(encoding="utf-8"))
    assert "itm" in json.dumps(results)


def test_inference_pipeline_captions_with_a_converted_checkpoint(tmp_path):
    """src.inference.pipeline.Captioner takes the converted folder (its model_config.yaml: region features, text
    length 30) and captions a region .npz with greedy decoding; its tokens are the converted decoder's."""
    from src.inference.pipeline import Captioner
    path = str(tmp_path / "original.ckpt")
    write_original(random_original("modelzoo", seed=4), path, training_state=False)
    out = str(tmp_path / "converted")
    assert convert.main(["--source", "modelzoo", path, "--config", CONFIGS["modelzoo"], "--out", out,
                         "--set", *ONE_LAYER["modelzoo"]]) == 0
    vocab = bert_chinese_layout_vocab(tmp_path / "vocab.txt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", feat=rng.standard_normal((12, 2048)).astype(np.float32),
             boxes=rng.random((12, 7)).astype(np.float32))
    captioner = Captioner(out, overrides=[f"data.vocab={vocab}", "caption.strategy=greedy", "caption.max_len=4",
                                          "caption.no_repeat_ngram=0"])
    assert captioner.cfg.model.image.mode == "features" and captioner.cfg.model.text_decoder.max_len == 30
    caption = captioner.caption(str(tmp_path / "a.npz"))
    assert isinstance(caption, str)


def test_a_modern_config_gets_a_loadable_warm_start_with_notes(tmp_path, capsys):
    """Converting into opt_1b.yaml (GELU decoders with learned positions, final LayerNorms, output biases, the global
    token fused) still loads strictly: positions hold the sinusoids, extra LayerNorms gain 1, biases 0; the notes say
    the decoders are then a warm start."""
    path = str(tmp_path / "original.ckpt")
    write_original(random_original("zidongtaichu", seed=3), path, training_state=False)
    out = str(tmp_path / "converted")
    overrides = ONE_LAYER["zidongtaichu"]
    assert convert.main(["--source", "zidongtaichu", path, "--config", "config/model/opt_1b.yaml", "--out", out,
                         "--set", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "warm start only" in printed and "fuse_global_token" in printed and "mlm_activation" in printed
    model = build_model(model_config("opt_1b", overrides).model)
    assert init_from_checkpoint(model, out) == []
    from src.models.layers import sinusoid_table
    np.testing.assert_allclose(model.text_decoder.position_embeddings.embedding_table.asnumpy(),
                               sinusoid_table(50, 1024), atol=1e-6)
    assert (model.text_decoder.output_bias.asnumpy() == 0).all()
    assert (model.text_decoder.final_norm.gamma.asnumpy() == 1).all()
