"""Key tables of the two released OPT checkpoints, as data (read by src.weights.released_opt).

Sources (reference: /work/shared/reference/opt_released_checkpoints.md and released_checkpoints/*.txt):
- ``zidongtaichu``: OPT_1-38_136.ckpt, the Zidong Taichu pre-training net (ViT-B/32 at 448, 1024-d audio features,
  text and image decoders). Its ViT and cross-modal encoder come from MindSpore 1.x's built-in transformer, whose
  attention output projection and FFN weights are stored [in, out]; every other Linear is [out, in].
- ``modelzoo``: opt_ascend_v190_cococaption_research_mm.ckpt, the model zoo's caption fine-tune (region features,
  512-d audio features, text decoder only). Every Linear is [out, in].
"""

SOURCES = ("zidongtaichu", "modelzoo")
# The model config with each checkpoint's shapes and math (config/model/).
SOURCE_CONFIGS = {"zidongtaichu": "opt_1b_released.yaml", "modelzoo": "opt_modelzoo_caption.yaml"}

# Block-internal renames: (original sub-key, ours). Encoder blocks (ViT, cross-modal encoder, decoder memory encoder).
ENCODER_BLOCK = (
    ("layernorm1.", "ln1."), ("layernorm2.", "ln2."),
    ("attention.dense1.", "attn.query."), ("attention.dense2.", "attn.key."), ("attention.dense3.", "attn.value."),
    ("attention.projection.", "attn.out."),
    ("output.mapping.", "ffn.fc1."), ("output.projection.", "ffn.fc2."),
)
# Decoder blocks: note the LayerNorm name swap (cross_attention_layernorm is our ln2, layernorm2 our ln3).
DECODER_BLOCK = (
    ("layernorm1.", "ln1."), ("cross_attention_layernorm.", "ln2."), ("layernorm2.", "ln3."),
    ("attention.dense1.", "self_attn.query."), ("attention.dense2.", "self_attn.key."),
    ("attention.dense3.", "self_attn.value."), ("attention.projection.", "self_attn.out."),
    ("cross_attention.dense1.", "cross_attn.query."), ("cross_attention.dense2.", "cross_attn.key."),
    ("cross_attention.dense3.", "cross_attn.value."), ("cross_attention.projection.", "cross_attn.out."),
    ("output.mapping.", "ffn.fc1."), ("output.projection.", "ffn.fc2."),
)
# Weights stored [in, out] (transposed on conversion): B's built-in-transformer stacks only.
IN_OUT_WEIGHTS = ("attention.projection.weight", "output.mapping.weight", "output.projection.weight")

# Block stacks: original prefix -> (our prefix, block table, [in,out] layout in B).
STACKS = {
    "uniter.img_embeddings.vit.encoder.blocks.": ("image_encoder.encoder.blocks.", ENCODER_BLOCK, True),
    "uniter.encoder.encoder.blocks.": ("cross_encoder.blocks.", ENCODER_BLOCK, True),
    "txt_output.tfm_encoder.blocks.": ("text_decoder.memory_encoder.blocks.", ENCODER_BLOCK, False),
    "txt_output.tfm_decoder.blocks.": ("text_decoder.blocks.", DECODER_BLOCK, False),
    "img_output.tfm_encoder.blocks.": ("image_decoder.memory_encoder.blocks.", ENCODER_BLOCK, False),
    "img_output.tfm_decoder.blocks.": ("image_decoder.blocks.", DECODER_BLOCK, False),
}

# The config key that sets the layer count of each of our stacks (named when a checkpoint's count differs).
STACK_LAYER_KEYS = {
    "image_encoder.encoder.blocks.": "model.image.layers",
    "cross_encoder.blocks.": "model.cross.layers",
    "text_decoder.memory_encoder.blocks.": "model.text_decoder.memory_layers",
    "text_decoder.blocks.": "model.text_decoder.layers",
    "image_decoder.memory_encoder.blocks.": "model.image_decoder.memory_layers",
    "image_decoder.blocks.": "model.image_decoder.layers",
}

# One-to-one renames shared by both sources (original key -> ours), values as stored.
DIRECT = {
    "uniter.embeddings.layernorm.gamma": "text_embed.layer_norm.gamma",
    "uniter.embeddings.layernorm.beta": "text_embed.layer_norm.beta",
    "uniter.img_embeddings.LayerNorm.gamma": "image_embed.layer_norm.gamma",
    "uniter.img_embeddings.LayerNorm.beta": "image_embed.layer_norm.beta",
    "uniter.audio_embeddings.audio_linear.bias": "audio_encoder.input_proj.bias",
    "uniter.audio_embeddings.audio_layer_norm.gamma": "audio_embed.proj_norm.gamma",
    "uniter.audio_embeddings.audio_layer_norm.beta": "audio_embed.proj_norm.beta",
    "uniter.audio_embeddings.LayerNorm.gamma": "audio_embed.layer_norm.gamma",
    "uniter.audio_embeddings.LayerNorm.beta": "audio_embed.layer_norm.beta",
    "uniter.pooler.dense.weight": "pooler.weight",
    "uniter.pooler.dense.bias": "pooler.bias",
    "txt_output.LinearEmbedding.weight": "text_decoder.memory_proj.weight",
    "txt_output.LinearEmbedding.bias": "text_decoder.memory_proj.bias",
}

DIRECT_ZIDONGTAICHU = {
    "uniter.img_embeddings.vit.stem.patch_to_embedding.dense.weight": "image_encoder.patch_embed.weight",
    "uniter.img_embeddings.vit.norm.gamma": "image_encoder.encoder.final_norm.gamma",
    "uniter.img_embeddings.vit.norm.beta": "image_encoder.encoder.final_norm.beta",
    "uniter.img_embeddings.img_linear.bias": "image_embed.proj.bias",
    "uniter.img_embeddings.img_layer_norm.gamma": "image_embed.proj_norm.gamma",
    "uniter.img_embeddings.img_layer_norm.beta": "image_embed.proj_norm.beta",
    "cls.predictions.transform.dense.weight": "mlm_head.transform.weight",
    "cls.predictions.transform.dense.bias": "mlm_head.transform.bias",
    "cls.predictions.transform.LayerNorm.gamma": "mlm_head.layer_norm.gamma",
    "cls.predictions.transform.LayerNorm.beta": "mlm_head.layer_norm.beta",
    "feat_regress.dense.weight": "image_regression_head.dense.weight",
    "feat_regress.dense.bias": "image_regression_head.dense.bias",
    "feat_regress.layer_norm.gamma": "image_regression_head.layer_norm.gamma",
    "feat_regress.layer_norm.beta": "image_regression_head.layer_norm.beta",
    "feat_regress.bias": "image_regression_head.out.bias",
    "itm_output.weight": "itm_head.dense.weight",
    "itm_output.bias": "itm_head.dense.bias",
    "img_output.LinearEmbedding.weight": "image_decoder.memory_proj.weight",
    "img_output.LinearEmbedding.bias": "image_decoder.memory_proj.bias",
}

DIRECT_MODELZOO = {
    "uniter.img_embeddings.img_linear.weight": "image_encoder.feature_embed.weight",
    "uniter.img_embeddings.img_linear.bias": "image_encoder.feature_embed.bias",
    "uniter.img_embeddings.img_layer_norm.gamma": "image_encoder.feature_norm.gamma",
    "uniter.img_embeddings.img_layer_norm.beta": "image_encoder.feature_norm.beta",
    "uniter.img_embeddings.pos_linear.weight": "image_encoder.box_embed.weight",
    "uniter.img_embeddings.pos_linear.bias": "image_encoder.box_embed.bias",
    "uniter.img_embeddings.pos_layer_norm.gamma": "image_encoder.box_norm.gamma",
    "uniter.img_embeddings.pos_layer_norm.beta": "image_encoder.box_norm.beta",
    "uniter.audio_embeddings.audio_linear.weight": "audio_encoder.input_proj.weight",
}

# Keys dropped on purpose, with the reason (prefix -> reason).
DROPPED = {
    "region_classifier.": "MRC head: never trained in the Zidong Taichu net (no MRC task id) and absent from ours",
    "uniter.img_embeddings.mask_embedding.": "mask vector added to the encoder output; ours replaces masked patches "
                                             "at the encoder input with image_encoder.mask_token (pre-training only)",
    "uniter.audio_embeddings.mask_embedding.": "mask vector of the input features; ours uses audio_encoder.mask_token "
                                               "after input_proj (pre-training only)",
    "audio_feat_regress.dense.": "MAFR head: trained on all-zero targets (the original's collate key bug), so "
                                 "effectively untrained; ours starts fresh",
    "audio_feat_regress.layer_norm.": "MAFR head: see audio_feat_regress.dense",
    "audio_feat_regress.bias": "MAFR head: see audio_feat_regress.dense",
}

# Our parameters with no counterpart in either file that keep the model's own initial values (reason).
FRESH = {
    "image_encoder.mask_token": "no counterpart (the original adds a mask vector after the encoder)",
    "audio_encoder.mask_token": "no counterpart (the original masks the input features)",
    "contrastive.": "no counterpart: the released models have no contrastive towers (docs/released_checkpoints.md: "
                    "a tower-only fine-tune adds them)",
    "audio_regression_head.": "the original's MAFR head is untrained (dropped)",
}

# BERT-Chinese special ids: the text decoder's BOS ([CLS]) and EOS ([SEP]) in this project; both take the original's
# single PAD/BOS/EOS row 0.
TEXT_BOS_ID, TEXT_EOS_ID = 101, 102
# Type-embedding rows of the shared table: text 0, image 1, audio 2.
TYPE_TEXT, TYPE_IMAGE, TYPE_AUDIO = 0, 1, 2
# Training state a MindSpore training cell writes next to the model (never converted).
TRAINING_STATE = ("adam_m.", "adam_v.", "global_step", "scale_sense", "current_iterator_step",
                  "last_overflow_iterator_step", "accu_grads.", "learning_rate", "beta1_power", "beta2_power")
