"""ViT image weights into OPT's image encoder: HuggingFace ViTModel / ViTForImageClassification, timm
VisionTransformer, and the vision tower of (Chinese-)CLIP. Our image encoder is a pre-LN ViT with a global token
(token 0, the CLS token) and a final LayerNorm, so all three map block for block. Ours (under image_encoder.) first:

    global_token (1,1,D)             HF {p}embeddings.cls_token [1,1,D]; timm cls_token [1,1,D];
                                     CLIP {p}embeddings.class_embedding [D]
    position_embeddings (1+n, D)     HF {p}embeddings.position_embeddings [1,1+N,D]; timm pos_embed [1,1+N,D];
                                     CLIP {p}embeddings.position_embedding.weight [1+N,D]   (resized when N != n)
    patch_embed (D, C*P*P) + bias    HF {p}embeddings.patch_embeddings.projection [D,C,P,P] + bias;
                                     timm patch_embed.proj [D,C,P,P] + bias; CLIP {p}embeddings.patch_embedding, no bias
    pre_norm                         CLIP {p}pre_layrnorm (sic)
    encoder.blocks.N.ln1             HF {p}encoder.layer.N.layernorm_before; timm blocks.N.norm1;
                                     CLIP {p}encoder.layers.N.layer_norm1
    encoder.blocks.N.attn.query/key/value
                                     HF ...attention.attention.query/key/value; timm blocks.N.attn.qkv [3D,D] (sliced);
                                     CLIP ...self_attn.q_proj/k_proj/v_proj
    encoder.blocks.N.attn.out        HF ...attention.output.dense; timm blocks.N.attn.proj; CLIP ...self_attn.out_proj
    encoder.blocks.N.ln2             HF ...layernorm_after; timm blocks.N.norm2; CLIP ...layer_norm2
    encoder.blocks.N.ffn.fc1 / fc2   HF ...intermediate.dense / output.dense; timm and CLIP ...mlp.fc1 / mlp.fc2
    encoder.final_norm               HF {p}layernorm; timm norm; CLIP {p}post_layernorm

with {p} = 'vit.' or '' (HF) and 'vision_model.' (CLIP).

(CLIP's post_layernorm acts on the class token only; our final LayerNorm acts on every token, which gives the same
class token; the patch tokens handed to the cross-modal encoder are normalised too.)

Two changes of form, both exact: the conv patch kernel [D, C, P, P] is reshaped to our linear patch embedding
(D, C*P*P) (our patches are flattened as (C, py, px), the conv's order), and the checkpoint's input normalisation
(preprocessor_config.json beside the file, else the layout's usual one) is folded into that layer, so our pipeline's
ImageNet-normalised pixels give the checkpoint exactly the inputs it was trained on. A position table made for
another grid is resized (checkpoint.position_interpolation; see foreign.resize_grid); the CLS row is kept as is.
"""
import math
import re

import numpy as np

from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from src.errors import UserError
from src.weights.foreign import fold_normalisation, layer_count, resize_grid, sidecar_json

OURS = "image_encoder."
HF_VIT, TIMM_VIT, CLIP_VIT = "HuggingFace ViT", "timm ViT", "CLIP ViT"
# what each layout needs of model.image: (activation, LayerNorm eps, pre_norm)
NEEDS = {HF_VIT: ("gelu_exact", 1e-12, False), TIMM_VIT: ("gelu_exact", 1e-6, False),
         CLIP_VIT: ("quick_gelu", 1e-5, True)}
# the input normalisation each layout usually expects when no preprocessor_config.json says otherwise
USUAL_NORM = {HF_VIT: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),               # google/vit-*-patch16-224
              TIMM_VIT: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),             # timm vit_*.augreg* (the default tags)
              CLIP_VIT: ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


def vit_layout(keys):
    """(layout, prefix) of a ViT file, or (None, None)."""
    for prefix in ("vit.", ""):
        if prefix + "embeddings.cls_token" in keys:
            return HF_VIT, prefix
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return TIMM_VIT, ""
    if "vision_model.embeddings.class_embedding" in keys:
        return CLIP_VIT, "vision_model."
    return None, None


def config_eps(imp, layout):
    """The LayerNorm eps the file was trained with: config.json beside it, else the layout's published default."""
    config = sidecar_json(imp.path, "config.json") or {}
    config = config.get("vision_config", config)
    return float(config.get("layer_norm_eps", NEEDS[layout][1]))


def input_norm(imp, layout):
    """(mean, std, where from) of the pixels the checkpoint expects, each in 0..1 units."""
    pre = sidecar_json(imp.path, "preprocessor_config.json")
    if pre and "image_mean" in pre and "image_std" in pre:
        return pre["image_mean"], pre["image_std"], "preprocessor_config.json"
    timm_cfg = (sidecar_json(imp.path, "config.json") or {}).get("pretrained_cfg", {})
    if "mean" in timm_cfg and "std" in timm_cfg:
        return timm_cfg["mean"], timm_cfg["std"], "config.json pretrained_cfg"
    mean, std = USUAL_NORM[layout]
    return mean, std, f"the usual {layout} normalisation (no preprocessor_config.json beside the file)"


def check_image_config(imp, layout, model_cfg):
    c = model_cfg.image
    if c.mode != "pixels" or c.stem != "linear":
        raise UserError(f"{imp.path}: {layout} weights need model.image.mode: pixels and model.image.stem: linear "
                        f"(the config has {c.mode} / {c.stem})")
    activation, _, pre_norm = NEEDS[layout]
    eps = model_cfg.layer_norm_eps if c.layer_norm_eps is None else float(c.layer_norm_eps)
    for key, have, need in (("model.image.activation", c.activation, activation),
                            ("model.image.layer_norm_eps", eps, config_eps(imp, layout)),
                            ("model.image.pre_norm", c.pre_norm, pre_norm)):
        if have != need:
            raise UserError(f"{imp.path}: {layout} weights need {key}: {need}, the config has {have}; set it "
                            f"(config/model/base_bert_vit.yaml or base_cnclip.yaml shows a whole set)")


def map_patch_and_positions(imp, layout, model_cfg, keys, interpolation):
    """Global token, patch embedding (reshaped, normalisation folded) and the position table (resized)."""
    c = model_cfg.image
    cls_key, pos_key, patch_key, bias_key = keys
    patch = imp.get(patch_key)
    imp.check(patch.shape[0], c.hidden, "the image width (patch-embedding output channels)",
              "set model.image.hidden to the file's width")
    imp.check(patch.shape[1], c.channels, "the number of image channels", "set model.image.channels")
    imp.check(patch.shape[2], c.patch_size, "the patch size", "set model.image.patch_size to the file's")
    cls = imp.get(cls_key)
    imp.take(cls_key, OURS + "global_token", cls.reshape(1, 1, -1), "reshaped" if cls.ndim != 3 else "mapped",
             f"{list(cls.shape)} -> [1, 1, {cls.shape[-1]}]: the CLS token is our global token")

    mean, std, origin = input_norm(imp, layout)
    bias = imp.get(bias_key) if bias_key else None
    weight, new_bias = fold_normalisation(patch.reshape(patch.shape[0], -1), bias, c.channels, IMAGENET_MEAN,
                                          IMAGENET_STD, mean, std)
    fold = (f"input normalisation mean {list(mean)} std {list(std)} ({origin}) folded in for our ImageNet-"
            f"normalised pixels")
    imp.take(patch_key, OURS + "patch_embed.weight", weight, "reshaped",
             f"conv kernel {list(patch.shape)} -> ({patch.shape[0]}, {int(np.prod(patch.shape[1:]))}) over (C, py, "
             f"px) patches; {fold}")
    if bias_key:
        imp.take(bias_key, OURS + "patch_embed.bias", new_bias, "merged", fold)
    else:
        imp.values[OURS + "patch_embed.bias"] = new_bias
        imp.report.add("merged", patch_key, OURS + "patch_embed.bias",
                       f"the file's patch embedding has no bias: 0 plus the {fold}")

    table = imp.get(pos_key)
    table = table.reshape(-1, table.shape[-1])
    grid_in = math.isqrt(table.shape[0] - 1)
    if grid_in * grid_in != table.shape[0] - 1:
        raise UserError(f"{imp.path}: '{pos_key}' has {table.shape[0]} rows, not 1 + a square patch grid")
    grid_out = c.image_size // c.patch_size
    if grid_in == grid_out:
        imp.take(pos_key, OURS + "position_embeddings.embedding_table", table,
                 "reshaped" if imp.get(pos_key).ndim == 3 else "mapped", "")
    else:
        resized = np.concatenate([table[:1], resize_grid(table[1:], grid_in, grid_out, interpolation)])
        imp.take(pos_key, OURS + "position_embeddings.embedding_table", resized, "interpolated",
                 f"patch grid {grid_in}x{grid_in} -> {grid_out}x{grid_out} ({interpolation}, align_corners=False; "
                 f"model.image.image_size {c.image_size}); the CLS row kept")


def map_ln(imp, base, ours):
    imp.take(base + ".weight", ours + ".gamma")
    imp.take(base + ".bias", ours + ".beta")


def map_dense(imp, base, ours):
    imp.take(base + ".weight", ours + ".weight")
    imp.take(base + ".bias", ours + ".bias")


def check_layers(imp, layers, model_cfg, sample_fc1, config_section=None):
    c = model_cfg.image
    imp.check(layers, c.layers, "the number of image layers", "set model.image.layers to the file's count")
    imp.check_heads(c.heads, "model.image.heads", config_section)
    if layers:
        imp.check(imp.get(sample_fc1).shape[0], c.ffn, "the image feed-forward width",
                  "set model.image.ffn to the file's width")


def map_hf_vit(imp, prefix, model_cfg, interpolation):
    check_image_config(imp, HF_VIT, model_cfg)
    e = prefix + "embeddings."
    layers = layer_count(imp.tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    check_layers(imp, layers, model_cfg, f"{prefix}encoder.layer.0.intermediate.dense.weight")
    map_patch_and_positions(imp, HF_VIT, model_cfg, (e + "cls_token", e + "position_embeddings",
                                                     e + "patch_embeddings.projection.weight",
                                                     e + "patch_embeddings.projection.bias"), interpolation)
    if imp.has(e + "mask_token"):
        imp.take(e + "mask_token", OURS + "mask_token", detail="ViT's masked-patch embedding (use_mask_token)")
    for n in range(layers):
        src, dst = f"{prefix}encoder.layer.{n}.", f"{OURS}encoder.blocks.{n}."
        map_ln(imp, src + "layernorm_before", dst + "ln1")
        for part in ("query", "key", "value"):
            map_dense(imp, src + "attention.attention." + part, dst + "attn." + part)
        map_dense(imp, src + "attention.output.dense", dst + "attn.out")
        map_ln(imp, src + "layernorm_after", dst + "ln2")
        map_dense(imp, src + "intermediate.dense", dst + "ffn.fc1")
        map_dense(imp, src + "output.dense", dst + "ffn.fc2")
    map_ln(imp, prefix + "layernorm", OURS + "encoder.final_norm")
    imp.drop_matching(re.escape(prefix) + r"pooler\.", "ViTModel's pooler (tanh(Dense(CLS))): OPT reads the CLS "
                                                      "token through its own heads")
    imp.drop_matching(r"classifier\.", "the ImageNet classifier of ViTForImageClassification")


def map_timm_vit(imp, model_cfg, interpolation):
    check_image_config(imp, TIMM_VIT, model_cfg)
    layers = layer_count(imp.tensors, r"blocks\.(\d+)\.")
    check_layers(imp, layers, model_cfg, "blocks.0.mlp.fc1.weight")
    map_patch_and_positions(imp, TIMM_VIT, model_cfg, ("cls_token", "pos_embed", "patch_embed.proj.weight",
                                                       "patch_embed.proj.bias"), interpolation)
    width = model_cfg.image.hidden
    for n in range(layers):
        src, dst = f"blocks.{n}.", f"{OURS}encoder.blocks.{n}."
        map_ln(imp, src + "norm1", dst + "ln1")
        qkv_w, qkv_b = imp.get(src + "attn.qkv.weight"), imp.get(src + "attn.qkv.bias")
        imp.check(qkv_w.shape[0], 3 * width, f"'{src}attn.qkv.weight' rows", "set model.image.hidden")
        for i, part in enumerate(("query", "key", "value")):
            rows = slice(i * width, (i + 1) * width)
            detail = f"rows {i * width}:{(i + 1) * width} of the fused qkv ({part})"
            imp.take(src + "attn.qkv.weight", dst + f"attn.{part}.weight", qkv_w[rows], "sliced", detail)
            imp.take(src + "attn.qkv.bias", dst + f"attn.{part}.bias", qkv_b[rows], "sliced", detail)
        map_dense(imp, src + "attn.proj", dst + "attn.out")
        map_ln(imp, src + "norm2", dst + "ln2")
        map_dense(imp, src + "mlp.fc1", dst + "ffn.fc1")
        map_dense(imp, src + "mlp.fc2", dst + "ffn.fc2")
    map_ln(imp, "norm", OURS + "encoder.final_norm")
    imp.drop_matching(r"head\.", "timm's classifier head")


def map_clip_vision(imp, model_cfg, interpolation, prefix="vision_model."):
    check_image_config(imp, CLIP_VIT, model_cfg)
    e = prefix + "embeddings."
    layers = layer_count(imp.tensors, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    check_layers(imp, layers, model_cfg, f"{prefix}encoder.layers.0.mlp.fc1.weight", "vision_config")
    map_patch_and_positions(imp, CLIP_VIT, model_cfg, (e + "class_embedding", e + "position_embedding.weight",
                                                       e + "patch_embedding.weight", None), interpolation)
    imp.drop(e + "position_ids", "an index buffer of older exports, not a weight")
    map_ln(imp, prefix + "pre_layrnorm", OURS + "pre_norm")
    for n in range(layers):
        src, dst = f"{prefix}encoder.layers.{n}.", f"{OURS}encoder.blocks.{n}."
        map_ln(imp, src + "layer_norm1", dst + "ln1")
        for theirs, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("out_proj", "out")):
            map_dense(imp, src + "self_attn." + theirs, dst + "attn." + ours)
        map_ln(imp, src + "layer_norm2", dst + "ln2")
        map_dense(imp, src + "mlp.fc1", dst + "ffn.fc1")
        map_dense(imp, src + "mlp.fc2", dst + "ffn.fc2")
    map_ln(imp, prefix + "post_layernorm", OURS + "encoder.final_norm")


def map_vit_file(imp, model_cfg, interpolation):
    """A whole ViT file in the HuggingFace or timm layout (a CLIP vision tower alone works too)."""
    layout, prefix = vit_layout(imp.tensors)
    imp.layout = layout or "ViT"
    if layout == HF_VIT:
        map_hf_vit(imp, prefix, model_cfg, interpolation)
    elif layout == TIMM_VIT:
        map_timm_vit(imp, model_cfg, interpolation)
    elif layout == CLIP_VIT:
        map_clip_vision(imp, model_cfg, interpolation)
    else:
        raise UserError(f"{imp.path}: neither 'vit.embeddings.cls_token' (HuggingFace ViT), 'cls_token' + "
                        f"'patch_embed.proj.weight' (timm) nor 'vision_model.embeddings.class_embedding' (CLIP): "
                        f"not a ViT checkpoint this loader knows (docs/pretrained_encoders.md)")
