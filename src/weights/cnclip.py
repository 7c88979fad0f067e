"""Chinese-CLIP (HuggingFace `ChineseCLIPModel` safetensors, e.g. OFA-Sys/chinese-clip-vit-base-patch16) into OPT's
two towers and contrastive head, so `itc` retrieval works before any OPT pre-training:

    text_model.*                   BERT layout (RoBERTa-wwm), no pooler  -> text_encoder   (bert.map_bert)
    vision_model.*                 CLIP ViT (pre_layrnorm, quick_gelu)   -> image_encoder  (vit.map_clip_vision)
    text_projection.weight  [P, Dt]   no bias                            -> contrastive.text_proj.weight
    visual_projection.weight [P, Dv]  no bias                            -> contrastive.image_proj.weight
    logit_scale             []        log of the inverse temperature     -> contrastive.logit_scale

Chinese-CLIP's features are the projected [CLS] text token and the projected, post-LayerNormed class token, so the
config must read token 0 of each tower (model.heads.text_pool: cls, image_pool: global) and project to the file's
width (model.heads.contrastive_dim). Our scale is exp(logit_scale) capped at 100, as CLIP clamps it in training.
"""
from src.errors import UserError
from src.weights.bert import map_bert
from src.weights.vit import map_clip_vision

CLASS_KEY = "vision_model.embeddings.class_embedding"


def is_chinese_clip(keys):
    return CLASS_KEY in keys and "text_model.embeddings.word_embeddings.weight" in keys


def map_chinese_clip_file(imp, model_cfg, interpolation):
    if not is_chinese_clip(imp.tensors):
        raise UserError(f"{imp.path}: no '{CLASS_KEY}' and 'text_model.embeddings.word_embeddings.weight': not a "
                        f"HuggingFace ChineseCLIPModel file; checkpoint.init_towers takes those "
                        f"(docs/pretrained_encoders.md)")
    heads = model_cfg.heads
    for key, have, need in (("model.heads.text_pool", heads.text_pool, "cls"),
                            ("model.heads.image_pool", heads.image_pool, "global")):
        if have != need:
            raise UserError(f"{imp.path}: Chinese-CLIP's features are token 0 of each tower: set {key}: {need} "
                            f"(the config has {have}; config/model/base_cnclip.yaml does)")
    projection = imp.get("text_projection.weight")
    imp.check(projection.shape[0], heads.contrastive_dim, "the projection width (text_projection rows)",
              "set model.heads.contrastive_dim to the file's")
    map_bert(imp, "text_model.", model_cfg, "Chinese-CLIP's text tower", config_section="text_config")
    map_clip_vision(imp, model_cfg, interpolation)
    imp.take("text_projection.weight", "contrastive.text_proj.weight")
    imp.take("visual_projection.weight", "contrastive.image_proj.weight")
    imp.take("logit_scale", "contrastive.logit_scale", detail="log(1 / temperature); our scale caps exp() at 100")
