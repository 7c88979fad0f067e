"""Public pre-trained encoders into OPT's towers (src/weights/{bert,vit,cnclip,pretrained}.py).

Each layout is written as a safetensors file with the published key names, shapes and dtypes (HuggingFace
modeling_bert / modeling_vit / modeling_chinese_clip, timm vision_transformer) holding random values, loaded with
nothing missing or unexpected, and our encoder's outputs are compared with a NumPy reference of that architecture
written here from its published description (float64; nothing of ours is used on the reference side).
"""
import json
import math
import os

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import save_file

from src.config import load_config
from src.errors import UserError
from src.models.opt import build_model
from src.weights.foreign import read_safetensors, resize_grid
from src.weights.pretrained import init_from_pretrained
from tests.helpers import ROOT

V, D, F, HEADS, P512 = 40, 32, 64, 2, 512
TEXT_LEN, IMAGE, PATCH = 12, 32, 8
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
BERT_MATH = ["model.text.post_ln=true", "model.text.type_vocab_size=2", "model.text.activation=gelu_exact",
             "model.text.layer_norm_eps=1.0e-12"]
VIT_MATH = ["model.image.activation=gelu_exact", "model.image.layer_norm_eps=1.0e-12"]
CLIP_MATH = ["model.image.activation=quick_gelu", "model.image.layer_norm_eps=1.0e-5", "model.image.pre_norm=true",
             "model.heads.text_pool=cls", "model.heads.image_pool=global"]


# ------------------------------------------------------------------------------------------ files in the layouts


def normal(rng, *shape, std=0.2):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def ln_params(rng, sd, base, legacy=False):
    sd[base + (".gamma" if legacy else ".weight")] = 1.0 + normal(rng, D, std=0.1)
    sd[base + (".beta" if legacy else ".bias")] = normal(rng, D, std=0.1)


def linear(rng, sd, base, n_out, n_in, bias=True):
    sd[base + ".weight"] = normal(rng, n_out, n_in, std=1.0 / math.sqrt(n_in))
    if bias:
        sd[base + ".bias"] = normal(rng, n_out, std=0.1)


def bert_state(rng, prefix="bert.", layers=2, vocab=V, heads_of="pretraining", legacy_ln=False):
    """BertForPreTraining's keys (bert.* + cls.*), or a ChineseCLIP text_model.* tower (no pooler) with prefix."""
    sd, e = {}, prefix + "embeddings."
    sd[e + "word_embeddings.weight"] = normal(rng, vocab, D)
    sd[e + "position_embeddings.weight"] = normal(rng, P512, D)
    sd[e + "token_type_embeddings.weight"] = normal(rng, 2, D)
    ln_params(rng, sd, e + "LayerNorm", legacy_ln)
    for n in range(layers):
        b = f"{prefix}encoder.layer.{n}."
        for part in ("query", "key", "value"):
            linear(rng, sd, b + "attention.self." + part, D, D)
        linear(rng, sd, b + "attention.output.dense", D, D)
        ln_params(rng, sd, b + "attention.output.LayerNorm", legacy_ln)
        linear(rng, sd, b + "intermediate.dense", F, D)
        linear(rng, sd, b + "output.dense", D, F)
        ln_params(rng, sd, b + "output.LayerNorm", legacy_ln)
    if heads_of == "pretraining":
        linear(rng, sd, prefix + "pooler.dense", D, D)
        sd["cls.predictions.bias"] = normal(rng, vocab)
        linear(rng, sd, "cls.predictions.transform.dense", D, D)
        ln_params(rng, sd, "cls.predictions.transform.LayerNorm", legacy_ln)
        linear(rng, sd, "cls.seq_relationship", 2, D)
    return sd


def hf_vit_state(rng, grid, layers=1, prefix="vit."):
    sd, e = {}, prefix + "embeddings."
    sd[e + "cls_token"] = normal(rng, 1, 1, D)
    sd[e + "position_embeddings"] = normal(rng, 1, 1 + grid * grid, D)
    sd[e + "patch_embeddings.projection.weight"] = normal(rng, D, 3, PATCH, PATCH, std=0.05)
    sd[e + "patch_embeddings.projection.bias"] = normal(rng, D, std=0.1)
    for n in range(layers):
        b = f"{prefix}encoder.layer.{n}."
        ln_params(rng, sd, b + "layernorm_before")
        for part in ("query", "key", "value"):
            linear(rng, sd, b + "attention.attention." + part, D, D)
        linear(rng, sd, b + "attention.output.dense", D, D)
        ln_params(rng, sd, b + "layernorm_after")
        linear(rng, sd, b + "intermediate.dense", F, D)
        linear(rng, sd, b + "output.dense", D, F)
    ln_params(rng, sd, prefix + "layernorm")
    linear(rng, sd, prefix + "pooler.dense", D, D)
    return sd


def timm_vit_state(rng, grid, layers=1, classes=10):
    sd = {"cls_token": normal(rng, 1, 1, D), "pos_embed": normal(rng, 1, 1 + grid * grid, D),
          "patch_embed.proj.weight": normal(rng, D, 3, PATCH, PATCH, std=0.05),
          "patch_embed.proj.bias": normal(rng, D, std=0.1)}
    for n in range(layers):
        b = f"blocks.{n}."
        ln_params(rng, sd, b + "norm1")
        linear(rng, sd, b + "attn.qkv", 3 * D, D)
        linear(rng, sd, b + "attn.proj", D, D)
        ln_params(rng, sd, b + "norm2")
        linear(rng, sd, b + "mlp.fc1", F, D)
        linear(rng, sd, b + "mlp.fc2", D, F)
    ln_params(rng, sd, "norm")
    linear(rng, sd, "head", classes, D)
    return sd


def cnclip_state(rng, grid, layers=1, projection=16, vocab=V):
    """HuggingFace ChineseCLIPModel: text_model.* (BERT, no pooler), vision_model.* (CLIP ViT), projections."""
    sd = bert_state(rng, "text_model.", layers, vocab, heads_of=None)
    e = "vision_model.embeddings."
    sd[e + "class_embedding"] = normal(rng, D)
    sd[e + "patch_embedding.weight"] = normal(rng, D, 3, PATCH, PATCH, std=0.05)
    sd[e + "position_embedding.weight"] = normal(rng, 1 + grid * grid, D)
    ln_params(rng, sd, "vision_model.pre_layrnorm")
    for n in range(layers):
        b = f"vision_model.encoder.layers.{n}."
        for part in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(rng, sd, b + "self_attn." + part, D, D)
        ln_params(rng, sd, b + "layer_norm1")
        linear(rng, sd, b + "mlp.fc1", F, D)
        linear(rng, sd, b + "mlp.fc2", D, F)
        ln_params(rng, sd, b + "layer_norm2")
    ln_params(rng, sd, "vision_model.post_layernorm")
    linear(rng, sd, "visual_projection", projection, D, bias=False)
    linear(rng, sd, "text_projection", projection, D, bias=False)
    sd["logit_scale"] = np.array(math.log(1 / 0.07) + 0.3, np.float32)
    return sd


def write(folder, sd, vocab=None, **sidecars):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.safetensors")
    save_file(sd, path)
    if vocab:
        with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")
    for name, content in sidecars.items():
        with open(os.path.join(folder, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(content, f)
    return path


def vocab_tokens(n=V):
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"字{i}" for i in range(n - 5)]


def config(tmp_path, overrides, vocab=V):
    vocab_path = tmp_path / "data_vocab.txt"
    vocab_path.write_text("\n".join(vocab_tokens(vocab)) + "\n", encoding="utf-8")
    sets = [f"model.text.vocab_size={vocab}", f"model.text.max_len={TEXT_LEN}", "model.text.layers=2",
            f"model.text.hidden={D}", f"model.text.ffn={F}", f"model.text.heads={HEADS}",
            f"model.image.image_size={IMAGE}", f"model.image.patch_size={PATCH}", f"model.image.hidden={D}",
            f"model.image.ffn={F}", f"model.image.heads={HEADS}", "model.image.layers=1",
            f"data.vocab={vocab_path}", *overrides]
    return load_config(os.path.join(ROOT, "config", "retrieval", "tiny.yaml"), sets)


def load(cfg):
    model = build_model(cfg.model)
    report = init_from_pretrained(model, cfg)
    model.set_train(False)
    return model, report


# ------------------------------------------------------------------------------------------ NumPy references


def erf(x):
    return np.vectorize(math.erf)(x)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def quick_gelu(x):
    return x / (1.0 + np.exp(-1.702 * x))


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def dense(x, sd, base):
    out = x @ sd[base + ".weight"].astype(np.float64).T
    return out + sd[base + ".bias"] if base + ".bias" in sd else out


def attention(x, q, k, v, key_mask=None):
    """Multi-head scaled dot-product attention of the projected q, k, v (B, L, D); key_mask (B, L) of 1/0."""
    b, n, _ = x.shape
    split = lambda t: t.reshape(b, n, HEADS, D // HEADS).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(D // HEADS)
    if key_mask is not None:
        scores = scores + (1.0 - key_mask[:, None, None, :]) * -1e9
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, n, D)


def ln_of(sd, base, eps):
    g = sd.get(base + ".weight", sd.get(base + ".gamma"))
    b = sd.get(base + ".bias", sd.get(base + ".beta"))
    return lambda x: layer_norm(x, g, b, eps)


def bert_reference(sd, prefix, ids, mask, layers=2, eps=1e-12):
    """HuggingFace BertModel: embeddings (word + position + token type 0) -> LayerNorm -> post-LN layers."""
    e = prefix + "embeddings."
    x = (sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][:ids.shape[1]]
         + sd[e + "token_type_embeddings.weight"][0]).astype(np.float64)
    x = ln_of(sd, e + "LayerNorm", eps)(x)
    for n in range(layers):
        b = f"{prefix}encoder.layer.{n}."
        a = attention(x, *(dense(x, sd, b + "attention.self." + p) for p in ("query", "key", "value")), mask)
        x = ln_of(sd, b + "attention.output.LayerNorm", eps)(x + dense(a, sd, b + "attention.output.dense"))
        h = gelu(dense(x, sd, b + "intermediate.dense"))
        x = ln_of(sd, b + "output.LayerNorm", eps)(x + dense(h, sd, b + "output.dense"))
    return x


def conv_patches(pixels, weight, bias=None):
    """A stride-P, kernel-P convolution (B, C, S, S) -> (B, grid*grid, D), outputs in row-major grid order."""
    b, c, s, _ = pixels.shape
    g = s // PATCH
    blocks = pixels.reshape(b, c, g, PATCH, g, PATCH)
    out = np.einsum("bcyixj,dcij->byxd", blocks, weight.astype(np.float64)).reshape(b, g * g, -1)
    return out if bias is None else out + bias


def torch_bicubic(grid, size):
    """torch.nn.functional.interpolate(mode='bicubic', align_corners=False) of a (g, g, D) grid, pixel by pixel."""
    a = -0.75

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a if t < 2 else 0.0

    g = grid.shape[0]
    out = np.zeros((size, size, grid.shape[2]))
    for oy in range(size):
        for ox in range(size):
            sy, sx = (oy + 0.5) * g / size - 0.5, (ox + 0.5) * g / size - 0.5
            for iy in range(math.floor(sy) - 1, math.floor(sy) + 3):
                for ix in range(math.floor(sx) - 1, math.floor(sx) + 3):
                    weight = kernel(sy - iy) * kernel(sx - ix)
                    out[oy, ox] += weight * grid[min(max(iy, 0), g - 1), min(max(ix, 0), g - 1)]
    return out


def positions_for(table, grid_out):
    """CLS row + the patch rows resized to grid_out x grid_out (bicubic) when needed."""
    table = table.reshape(-1, D).astype(np.float64)
    g = math.isqrt(table.shape[0] - 1)
    if g == grid_out:
        return table
    patches = torch_bicubic(table[1:].reshape(g, g, D), grid_out).reshape(-1, D)
    return np.concatenate([table[:1], patches])


def vit_reference(cls, pos, patch_w, patch_b, block_params, final_ln, pixels, act, eps, pre_ln=None):
    """A pre-LN ViT: [CLS | conv patches] + positions (-> LayerNorm for CLIP) -> blocks -> final LayerNorm.
    block_params: per block (ln1, q, k, v, out, ln2, fc1, fc2) as callables."""
    x = conv_patches(pixels, patch_w, patch_b)
    x = np.concatenate([np.broadcast_to(cls.reshape(1, 1, D), (x.shape[0], 1, D)), x], 1) + pos
    if pre_ln is not None:
        x = pre_ln(x)
    for ln1, q, k, v, out, ln2, fc1, fc2 in block_params:
        h = ln1(x)
        x = x + out(attention(h, q(h), k(h), v(h)))
        x = x + fc2(act(fc1(ln2(x))))
    return final_ln(x)


def pixels_both_ways(rng, batch, norm):
    """Random 0..255 images normalised as our pipeline does (ImageNet) and as the checkpoint expects (`norm`)."""
    raw = rng.uniform(0, 255, (batch, 3, IMAGE, IMAGE))
    ours = (raw / 255.0 - np.reshape(IMAGENET[0], (1, 3, 1, 1))) / np.reshape(IMAGENET[1], (1, 3, 1, 1))
    theirs = (raw / 255.0 - np.reshape(norm[0], (1, 3, 1, 1))) / np.reshape(norm[1], (1, 3, 1, 1))
    return ours.astype(np.float32), theirs


def text_inputs(rng, batch=3):
    ids = rng.integers(5, V, (batch, TEXT_LEN)).astype(np.int32)
    mask = np.ones((batch, TEXT_LEN), np.int32)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def assert_close(ours, ref, tol=1e-4):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    error = np.abs(ours - ref).max() / np.abs(ref).max()
    assert error < tol, f"max relative error {error:.2e}"


def run(cell, *inputs):
    return cell(*[ms.Tensor(x) for x in inputs])


# ------------------------------------------------------------------------------------------ tests


def test_bert_text_encoder_matches_the_post_ln_reference(tmp_path, pynative):
    rng = np.random.default_rng(0)
    sd = bert_state(rng, legacy_ln=True)
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={write(tmp_path / 'bert', sd, vocab_tokens())}"])
    model, report = load(cfg)
    ids, mask = text_inputs(rng)
    tokens, _ = run(model.text_encoder, ids, mask)
    assert_close(tokens.asnumpy(), bert_reference(sd, "bert.", ids, mask))
    # every key mapped or dropped, every text-encoder parameter set
    assert {r["source"] for r in report.rows if r["source"]} == set(sd)
    assert not [n for n in report.keys("initialised") if n.startswith("text_encoder.")]
    dropped = set(report.keys("dropped"))
    assert {"bert.pooler.dense.weight", "cls.predictions.bias", "cls.seq_relationship.weight"} <= dropped
    assert report.keys("sliced") == ["text_encoder.position_embeddings.embedding_table"]
    assert "cross_encoder.blocks.0.attn.query.weight" in report.keys("initialised")


def test_hf_vit_with_interpolated_positions_matches_the_reference(tmp_path, pynative):
    rng = np.random.default_rng(1)
    grid_file = 3                               # the file was trained at 24 px; the config asks for 32 px (4x4)
    sd = hf_vit_state(rng, grid_file)
    path = write(tmp_path / "vit", sd, preprocessor_config={"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    model, report = load(config(tmp_path, VIT_MATH + [f"checkpoint.init_image={path}"]))
    ours, theirs = pixels_both_ways(rng, 2, ((0.5,) * 3, (0.5,) * 3))
    tokens, _ = run(model.image_encoder, ours)
    p, eps = "vit.encoder.layer.0.", 1e-12
    block = (ln_of(sd, p + "layernorm_before", eps), *(lambda h, n=n: dense(h, sd, p + "attention.attention." + n)
                                                       for n in ("query", "key", "value")),
             lambda h: dense(h, sd, p + "attention.output.dense"), ln_of(sd, p + "layernorm_after", eps),
             lambda h: dense(h, sd, p + "intermediate.dense"), lambda h: dense(h, sd, p + "output.dense"))
    e = "vit.embeddings."
    ref = vit_reference(sd[e + "cls_token"], positions_for(sd[e + "position_embeddings"], IMAGE // PATCH),
                        sd[e + "patch_embeddings.projection.weight"], sd[e + "patch_embeddings.projection.bias"],
                        [block], ln_of(sd, "vit.layernorm", eps), theirs, gelu, eps)
    assert_close(tokens.asnumpy(), ref)
    assert report.keys("interpolated") == ["image_encoder.position_embeddings.embedding_table"]
    assert {r["source"] for r in report.rows if r["source"]} == set(sd)
    assert "vit.pooler.dense.weight" in report.keys("dropped")
    assert not [n for n in report.keys("initialised") if n.startswith("image_encoder.")
                and n != "image_encoder.mask_token"]


def test_timm_vit_fused_qkv_matches_the_reference(tmp_path, pynative):
    rng = np.random.default_rng(2)
    sd = timm_vit_state(rng, IMAGE // PATCH)
    model, report = load(config(tmp_path, ["model.image.activation=gelu_exact", "model.image.layer_norm_eps=1.0e-6",
                                           f"checkpoint.init_image={write(tmp_path / 'timm', sd)}"]))
    ours, theirs = pixels_both_ways(rng, 2, ((0.5,) * 3, (0.5,) * 3))   # timm augreg's usual normalisation
    tokens, _ = run(model.image_encoder, ours)
    qkv_w, qkv_b = sd["blocks.0.attn.qkv.weight"].astype(np.float64), sd["blocks.0.attn.qkv.bias"]
    qkv = [lambda h, i=i: h @ qkv_w[i * D:(i + 1) * D].T + qkv_b[i * D:(i + 1) * D] for i in range(3)]
    block = (ln_of(sd, "blocks.0.norm1", 1e-6), *qkv, lambda h: dense(h, sd, "blocks.0.attn.proj"),
             ln_of(sd, "blocks.0.norm2", 1e-6), lambda h: dense(h, sd, "blocks.0.mlp.fc1"),
             lambda h: dense(h, sd, "blocks.0.mlp.fc2"))
    ref = vit_reference(sd["cls_token"], sd["pos_embed"].reshape(-1, D), sd["patch_embed.proj.weight"],
                        sd["patch_embed.proj.bias"], [block], ln_of(sd, "norm", 1e-6), theirs, gelu, 1e-6)
    assert_close(tokens.asnumpy(), ref)
    assert len(report.keys("sliced")) == 6 and "head.weight" in report.keys("dropped")


def test_chinese_clip_towers_projections_and_scale_match_the_reference(tmp_path, pynative):
    rng = np.random.default_rng(3)
    sd = cnclip_state(rng, IMAGE // PATCH, layers=2)
    path = write(tmp_path / "cnclip", sd, vocab_tokens())
    cfg = config(tmp_path, BERT_MATH + CLIP_MATH + ["model.image.layers=2", "model.heads.contrastive_dim=16",
                                                    f"checkpoint.init_towers={path}"])
    model, report = load(cfg)
    ids, mask = text_inputs(rng)
    ours, theirs = pixels_both_ways(rng, 3, CLIP_NORM)
    text, t_mask = run(model.text_encoder, ids, mask)
    image, _ = run(model.image_encoder, ours)
    t_feat = model.text_features(text, t_mask).asnumpy()
    i_feat = model.image_features(image).asnumpy()
    logits = float(model.contrastive.scale().asnumpy()) * t_feat @ i_feat.T

    eps, blocks = 1e-5, []
    for n in range(2):
        p = f"vision_model.encoder.layers.{n}."
        blocks.append((ln_of(sd, p + "layer_norm1", eps), *(lambda h, p=p, q=q: dense(h, sd, p + "self_attn." + q)
                                                             for q in ("q_proj", "k_proj", "v_proj", "out_proj")),
                       ln_of(sd, p + "layer_norm2", eps), lambda h, p=p: dense(h, sd, p + "mlp.fc1"),
                       lambda h, p=p: dense(h, sd, p + "mlp.fc2")))
    e = "vision_model.embeddings."
    last = vit_reference(sd[e + "class_embedding"], sd[e + "position_embedding.weight"].astype(np.float64),
                         sd[e + "patch_embedding.weight"], None, blocks, lambda x: x, theirs, quick_gelu, eps,
                         pre_ln=ln_of(sd, "vision_model.pre_layrnorm", eps))
    pooled = ln_of(sd, "vision_model.post_layernorm", eps)(last[:, 0])
    ref_i = pooled @ sd["visual_projection.weight"].T
    ref_t = bert_reference(sd, "text_model.", ids, mask)[:, 0] @ sd["text_projection.weight"].T
    ref_i /= np.linalg.norm(ref_i, axis=-1, keepdims=True)
    ref_t /= np.linalg.norm(ref_t, axis=-1, keepdims=True)
    assert_close(t_feat, ref_t)
    assert_close(i_feat, ref_i)
    assert_close(logits, np.exp(sd["logit_scale"].astype(np.float64)) * ref_t @ ref_i.T)
    assert {r["source"] for r in report.rows if r["source"]} == set(sd)
    assert not report.keys("dropped")
    initialised = report.keys("initialised")
    assert not [n for n in initialised if n.startswith(("text_encoder.", "image_encoder.", "contrastive.t",
                                                        "contrastive.i", "contrastive.l"))
                and n != "image_encoder.mask_token"]
    assert "contrastive.audio_proj.weight" in initialised


def test_report_is_written_and_names_every_parameter(tmp_path, pynative):
    rng = np.random.default_rng(4)
    path = write(tmp_path / "bert", bert_state(rng, prefix=""))
    model, report = load(config(tmp_path, BERT_MATH + [f"checkpoint.init_text={path}"]))
    written = {r["ours"] for r in report.rows if r["action"] not in ("dropped", "cast")}
    assert written == set(model.parameters_dict())
    json_path, md_path = report.write(str(tmp_path / "run"))
    assert json.load(open(json_path, encoding="utf-8"))["counts"]["initialised"] == len(report.keys("initialised"))
    assert "| mapped | embeddings.word_embeddings.weight |" in open(md_path, encoding="utf-8").read()


def test_bf16_and_fp16_files_are_read_and_reported_as_cast(tmp_path):
    rng = np.random.default_rng(5)
    values = normal(rng, 4, 3)
    path = str(tmp_path / "half.safetensors")
    save_file({"a": values.astype(np.float16)}, path)
    tensors, dtypes = read_safetensors(path)
    assert dtypes == {"a": "F16"} and tensors["a"].dtype == np.float32
    np.testing.assert_array_equal(tensors["a"], values.astype(np.float16).astype(np.float32))
    # BF16: the top 16 bits of float32, written by hand in the safetensors layout
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"b": {"dtype": "BF16", "shape": [4, 3], "data_offsets": [0, bits.nbytes]}}).encode()
    with open(tmp_path / "bf16.safetensors", "wb") as f:
        f.write(np.array([len(header)], "<u8").tobytes() + header + bits.tobytes())
    tensors, _ = read_safetensors(str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(tensors["b"], (bits.astype(np.uint32) << 16).view(np.float32))


def test_position_resize_equals_torch_bicubic_and_keeps_bilinear_ramps():
    rng = np.random.default_rng(6)
    grid = rng.standard_normal((5, 5, 3))
    for size in (3, 7, 8):
        np.testing.assert_allclose(resize_grid(grid.reshape(25, 3), 5, size, "bicubic").reshape(size, size, 3),
                                   torch_bicubic(grid, size), rtol=1e-5, atol=1e-5)
    ramp = np.repeat(np.arange(4.0)[:, None], 4, 1)[..., None]          # value = row index
    up = resize_grid(ramp.reshape(16, 1), 4, 8, "bilinear").reshape(8, 8)
    # output row i samples input row (i + 0.5) / 2 - 0.5, clamped to [0, 3] at the edges
    np.testing.assert_allclose(up[:, 0], np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3), atol=1e-6)


@pytest.mark.parametrize("override, words", [
    ("model.text.vocab_size=41", "vocabulary size"),
    ("model.text.hidden=48", "text width"),
    ("model.text.layers=1", "number of text layers"),
    ("model.text.post_ln=false", "model.text.post_ln"),
])
def test_mismatching_text_files_fail_in_one_line(tmp_path, override, words):
    path = write(tmp_path / "bert", bert_state(np.random.default_rng(7)))
    vocab = 41 if "vocab_size" in override else V
    cfg = config(tmp_path, BERT_MATH + [override, f"checkpoint.init_text={path}"], vocab=vocab)
    with pytest.raises(UserError, match=words) as err:
        init_from_pretrained(build_model(cfg.model), cfg)
    assert "\n" not in str(err.value) and path in str(err.value)


def test_vocab_txt_beside_the_weights_must_equal_data_vocab(tmp_path):
    other = vocab_tokens()
    other[9] = "别的"
    path = write(tmp_path / "bert", bert_state(np.random.default_rng(8)), other)
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={path}"])
    with pytest.raises(UserError, match="line 10 is '字4'") as err:
        init_from_pretrained(build_model(cfg.model), cfg)
    assert "\n" not in str(err.value)


def test_mismatching_image_files_fail_in_one_line(tmp_path):
    path = write(tmp_path / "vit", hf_vit_state(np.random.default_rng(9), 4, layers=2))
    cfg = config(tmp_path, VIT_MATH + [f"checkpoint.init_image={path}"])
    with pytest.raises(UserError, match="number of image layers is 2 in the file but 1 in the config"):
        init_from_pretrained(build_model(cfg.model), cfg)
    cfg = config(tmp_path, VIT_MATH + ["model.image.layers=2", "model.image.patch_size=16",
                                       f"checkpoint.init_image={path}"])
    with pytest.raises(UserError, match="patch size is 8 in the file but 16"):
        init_from_pretrained(build_model(cfg.model), cfg)


def test_torch_pickles_are_refused_with_the_conversion_command(tmp_path):
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"not read")
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={pickle}"])
    with pytest.raises(UserError, match="safetensors.torch import save_file"):
        init_from_pretrained(build_model(cfg.model), cfg)


@pytest.mark.parametrize("name", ["base_bert_vit", "base_cnclip"])
def test_new_model_configs_resolve_and_build_cut_to_one_layer(name, pynative):
    from tests.helpers import model_config
    cfg = model_config(name, ["model.text.layers=1", "model.image.layers=1", "model.cross.layers=1",
                              "model.text_decoder.layers=1", "model.image_decoder.layers=1",
                              "model.audio.layers=1"]).model
    model = build_model(cfg)
    names = set(model.parameters_dict())
    assert "text_encoder.token_type_embeddings.embedding_table" in names
    assert ("image_encoder.pre_norm.gamma" in names) == (name == "base_cnclip")
    assert "text_encoder.encoder.final_norm.gamma" not in names          # post-LN BERT has no final LayerNorm


ENCODERS_FROZEN, TOWERS_ONLY = "encoders frozen", "towers only"


@pytest.mark.parametrize("path, recipe", [("retrieval/cnclip_zeroshot.yaml", None),
                                          ("retrieval/cnclip_finetune.yaml", ENCODERS_FROZEN),
                                          ("pretrain/bert_vit.yaml", ENCODERS_FROZEN),
                                          ("pretrain/bert_vit_towers.yaml", TOWERS_ONLY)])
def test_new_run_configs_resolve_and_their_freeze_lists_fit_the_model(path, recipe, pynative):
    from src.engine.optim import select_trainable
    from src.weights.pretrained import pretrained_sources
    cut = [f"model.{part}.layers=1" for part in ("text", "image", "audio", "cross", "text_decoder", "image_decoder")]
    cfg = load_config(os.path.join(ROOT, "config", path), cut)
    assert [key for key, _ in pretrained_sources(cfg.checkpoint)] in (["init_towers"], ["init_text", "init_image"])
    params = build_model(cfg.model).trainable_params()
    trained = {p.name.split(".")[0] for p in select_trainable(params, cfg.train.freeze)}
    everything = {p.name.split(".")[0] for p in params}
    expected = {None: everything, ENCODERS_FROZEN: everything - {"text_encoder", "image_encoder"},
                TOWERS_ONLY: {"text_encoder", "image_encoder", "contrastive"}}[recipe]
    assert trained == expected


def test_head_count_from_config_json_is_checked(tmp_path):
    path = write(tmp_path / "bert", bert_state(np.random.default_rng(10)),
                 config={"num_attention_heads": 4, "layer_norm_eps": 1e-12})
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={path}"])
    with pytest.raises(UserError, match="number of attention heads .config.json. is 4 in the file but 2"):
        init_from_pretrained(build_model(cfg.model), cfg)


def test_init_vocab_names_the_weights_vocabulary(tmp_path):
    path = write(tmp_path / "bert", bert_state(np.random.default_rng(11)))          # no vocab.txt beside it
    other = tmp_path / "their_vocab.txt"
    other.write_text("\n".join(vocab_tokens()[:-1] + ["另一个"]) + "\n", encoding="utf-8")
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={path}", f"checkpoint.init_vocab={other}"])
    with pytest.raises(UserError, match=f"line {V} is '字{V - 6}' but the weights' vocabulary"):
        init_from_pretrained(build_model(cfg.model), cfg)
    same = tmp_path / "same_vocab.txt"
    same.write_text("\n".join(vocab_tokens()) + "\n", encoding="utf-8")
    cfg = config(tmp_path, BERT_MATH + [f"checkpoint.init_text={path}", f"checkpoint.init_vocab={same}"])
    assert init_from_pretrained(build_model(cfg.model), cfg).counts()["mapped"] > 0


def test_clashing_init_keys_are_refused(tmp_path):
    from src.weights.pretrained import pretrained_sources
    for sets, words in ((["checkpoint.init_towers=a.safetensors", "checkpoint.init_text=b.safetensors"],
                         "init_towers"),
                        (["checkpoint.init=run/step_1", "checkpoint.init_image=b.safetensors"], "both set")):
        with pytest.raises(UserError, match=words):
            pretrained_sources(config(tmp_path, sets).checkpoint)
