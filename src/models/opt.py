"""OPTModel: three single-modal encoders, a cross-modal encoder over any subset of [text | image | audio], two
decoders and the task heads. The model knows nothing of tasks, data or training; task Cells in `src/tasks` call its
methods.

Sequence layout of the cross-modal encoder: the present modalities in the order text, image, audio, each projected to
the cross-modal width with its own LayerNorm, position and type embedding. The key-padding mask is the concatenation
of the modalities' masks. Pooled output = tanh(Dense(token 0)).
"""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

# IMAGE_TOKEN_OFFSET: the image-decoder vocabulary is PAD 0, BOS 1, EOS 2, then the VQ codes
from src.data.labels import (IMAGE_TOKEN_OFFSET, ITM_AUDIO_SWAPPED, ITM_BOTH_DIFFERENT, ITM_CLASSES, ITM_IMAGE_SWAPPED,
                             ITM_MATCHED, ITM_SAME_OTHER)

from .decoder import Decoder
from .encoders import AudioEncoder, ImageEncoder, TextEncoder, positions
from .heads import ContrastiveHead, MatchingHead, MLMHead, RegressionHead
from .layers import EncoderStack, dense, dropout_layer, embedding, grid_position_embedding, layer_norm

# Which modality pairs belong together under each three-modal matching class: (text-image, text-audio, image-audio),
# +1 together, -1 not (the matching head's fixed `pattern`; see src.data.masking.itm_batch for the classes).
THREE_MODAL_PATTERN = {
    ITM_SAME_OTHER: (-1, -1, +1),      # image and audio from the same other sample
    ITM_IMAGE_SWAPPED: (-1, +1, -1),
    ITM_AUDIO_SWAPPED: (+1, -1, -1),
    ITM_BOTH_DIFFERENT: (-1, -1, -1),
    ITM_MATCHED: (+1, +1, +1),
}
PAIR_PATTERN = ((-1,), (+1,))          # text-image pair matching: class 0 not matched, class 1 matched


class ModalityEmbedding(nn.Cell):
    """Single-modal tokens -> cross-modal width: LN(Dense(x)) + position + type, LayerNorm, dropout.

    `grid`: the tokens are one global token and a grid x grid patch grid, whose positions start from sincos_2d.
    `project` False: x + position + type (the tokens are already as wide as the cross-modal encoder; the model-zoo OPT's
    region embedding, model.image.region_embedding two_norms).
    """

    def __init__(self, in_width, width, length, eps, dropout, init_range, grid=None, project=True):
        super().__init__()
        if not project and in_width != width:
            raise ValueError(f"tokens {in_width} wide cannot enter a {width}-wide cross-modal embedding without a "
                             f"projection")
        self.project = project
        if project:
            self.proj = dense(in_width, width, init_range)
            self.proj_norm = layer_norm(width, eps)
        self.position_embeddings = (grid_position_embedding(grid, width) if grid else
                                    embedding(length, width, init_range))
        self.type_embedding = Parameter(initializer(Normal(init_range), (1, 1, width)), name="type_embedding")
        self.layer_norm = layer_norm(width, eps)
        self.dropout = dropout_layer(dropout)

    def construct(self, x):
        if self.project:
            x = self.proj_norm(self.proj(x))
        x = x + self.position_embeddings(positions(x.shape[1])) + self.type_embedding
        return self.dropout(self.layer_norm(x))


def image_token_grid(cfg):
    """Side of the square VQ token grid the image decoder generates (max_len - 1 tokens), or None when positions
    start from N(0, 0.02) (model.image.position_init: normal) or the token count is not a square."""
    side = math.isqrt(cfg.image_decoder.max_len - 1)
    square = side * side == cfg.image_decoder.max_len - 1
    return side if cfg.image.position_init == "sincos" and square else None


class OPTModel(nn.Cell):
    def __init__(self, cfg):
        """cfg: the `model` section of a config (attribute access). `cfg.text.vocab_size` must be resolved (> 0)."""
        super().__init__()
        if cfg.text.vocab_size <= 0:
            raise ValueError("model.text.vocab_size is 0: set it, or build the model with build_model(cfg, "
                             "vocab_size=len(tokenizer vocab))")
        self.cfg = cfg
        eps, init, drop, width = cfg.layer_norm_eps, cfg.initializer_range, cfg.dropout, cfg.cross.hidden
        self.text_encoder = TextEncoder(cfg, cfg.text)
        self.image_encoder = ImageEncoder(cfg, cfg.image)
        self.audio_encoder = AudioEncoder(cfg, cfg.audio)
        self.text_embed = ModalityEmbedding(cfg.text.hidden, width, cfg.text.max_len, eps, drop, init)
        two_norms = cfg.image.mode == "features" and cfg.image.region_embedding == "two_norms"
        if two_norms and cfg.image.layers:
            raise ValueError("model.image.region_embedding two_norms feeds the region embedding straight to the "
                             "cross-modal encoder: set model.image.layers 0")
        self.image_embed = ModalityEmbedding(cfg.image.hidden, width, self.image_encoder.num_tokens + 1, eps, drop,
                                             init, grid=self.image_encoder.position_grid, project=not two_norms)
        self.audio_embed = ModalityEmbedding(cfg.audio.hidden, width, self.audio_encoder.num_tokens, eps, drop, init)
        self.cross_encoder = EncoderStack(width, cfg.cross.layers, cfg.cross.heads, cfg.cross.ffn, drop,
                                          cfg.attention_dropout, eps, init, final_norm=cfg.cross.final_layer_norm)
        self.pooler = dense(width, width, init)
        self.text_decoder = Decoder(cfg, cfg.text_decoder, cfg.text.vocab_size, width)
        self.image_decoder = Decoder(cfg, cfg.image_decoder, cfg.image_decoder.codebook_size + IMAGE_TOKEN_OFFSET,
                                     width, grid=image_token_grid(cfg))
        image_target = cfg.image.hidden if cfg.image.mode == "pixels" else cfg.image.feature_dim
        audio_target = cfg.audio.hidden if cfg.audio.mode == "mel" else cfg.audio.feature_dim
        self.mlm_head = MLMHead(width, cfg.text.hidden, cfg.text.vocab_size, eps, init, cfg.heads.mlm_activation)
        self.image_regression_head = RegressionHead(width, image_target, eps, init)
        self.audio_regression_head = RegressionHead(width, audio_target, eps, init)
        for key, value, allowed in (("text_pool", cfg.heads.text_pool, ("mean", "cls")),
                                    ("image_pool", cfg.heads.image_pool, ("mean", "global"))):
            if value not in allowed:
                raise ValueError(f"model.heads.{key} must be one of {allowed}, got {value!r}")
        if cfg.heads.itm_classes != ITM_CLASSES:
            raise ValueError(f"model.heads.itm_classes must be {ITM_CLASSES} (src.data.masking.ITM_*), got "
                             f"{cfg.heads.itm_classes}")
        self.itm_head = MatchingHead(width, [THREE_MODAL_PATTERN[k] for k in range(ITM_CLASSES)], init)
        self.pair_head = MatchingHead(width, PAIR_PATTERN, init)
        self.contrastive = ContrastiveHead(cfg.text.hidden, cfg.image.hidden, cfg.audio.hidden,
                                           cfg.heads.contrastive_dim, cfg.heads.temperature, init)

    # ----- single-modal encoders -----
    def encode_text(self, ids, mask):
        return self.text_encoder(ids, mask)

    def split_regions(self, packed):
        """Features mode: the packed image column (B, R, feature_dim + box_dim + 1) = [features | boxes | region mask]
        (src.data.regions.pack_regions) -> (feats, boxes, region_mask)."""
        d, b = self.cfg.image.feature_dim, self.cfg.image.box_dim
        return packed[:, :, :d], packed[:, :, d:d + b], packed[:, :, d + b]

    def encode_image(self, images=None, masked=None, feats=None, boxes=None, region_mask=None):
        """Image tokens (B, 1 + N, hidden) and their mask for the cross-modal encoder. In features mode `images` may be
        the packed region column (split_regions). With model.image.fuse_global_token false the global token's mask
        entry is 0, so the cross-modal encoder sees only the patches / regions (the original's gather order)."""
        if self.image_encoder.mode == "features" and feats is None:
            feats, boxes, region_mask = self.split_regions(images)
            images = None
        tokens, mask = self.image_encoder(images, masked, feats, boxes, region_mask)
        if not self.cfg.image.fuse_global_token:
            mask = ops.concat((ops.zeros_like(mask[:, :1]), mask[:, 1:]), 1)
        return tokens, mask

    def image_regression_target(self, images):
        """Masked vision modelling target: standardised stop-gradient image-encoder outputs of the patches (pixels
        mode), or the standardised input region features (features mode; what the regression head is sized to)."""
        if self.image_encoder.mode == "features":
            return self.split_regions(images)[0]
        return self.encode_image(images)[0][:, 1:]

    def audio_regression_target(self, audio, frame_mask):
        """Masked audio modelling target: the audio encoder's outputs (mel mode) or the input frame features
        (features mode; what the regression head is sized to)."""
        if self.audio_encoder.mode == "features":
            return audio
        return self.encode_audio(audio, frame_mask)[0]

    def encode_audio(self, audio, frame_mask, masked=None):
        return self.audio_encoder(audio, frame_mask, masked)

    # ----- cross-modal encoder -----
    def fuse(self, text=None, text_mask=None, image=None, image_mask=None, audio=None, audio_mask=None):
        """Single-modal outputs (any subset, at least one) -> (sequence (B, S, H), mask (B, S))."""
        parts, masks = (), ()
        if text is not None:
            parts, masks = parts + (self.text_embed(text),), masks + (ops.cast(text_mask, ms.float32),)
        if image is not None:
            parts, masks = parts + (self.image_embed(image),), masks + (ops.cast(image_mask, ms.float32),)
        if audio is not None:
            parts, masks = parts + (self.audio_embed(audio),), masks + (ops.cast(audio_mask, ms.float32),)
        seq = ops.concat(parts, 1) if len(parts) > 1 else parts[0]
        mask = ops.concat(masks, 1) if len(masks) > 1 else masks[0]
        return self.cross_encoder(seq, mask), mask

    def pool(self, seq):
        return ops.tanh(self.pooler(seq[:, 0]))

    # ----- heads -----
    def mlm_logits(self, hidden):
        return self.mlm_head(hidden, self.text_encoder.word_embeddings.embedding_table)

    def text_features(self, text_tokens, text_mask):
        """Normalised contrastive embedding of the text tower: mean over real tokens, or token 0 ([CLS]) with
        model.heads.text_pool: cls (as CLIP)."""
        if self.cfg.heads.text_pool == "cls":
            return self.contrastive.text(text_tokens[:, 0])
        w = ops.expand_dims(ops.cast(text_mask, text_tokens.dtype), -1)
        return self.contrastive.text((text_tokens * w).sum(1) / ops.maximum(w.sum(1), 1.0))

    def image_features(self, image_tokens):
        """Normalised contrastive embedding of the image tower: mean over the global token and the patches, or the
        global token alone with model.heads.image_pool: global (as CLIP)."""
        if self.cfg.heads.image_pool == "global":
            return self.contrastive.image(image_tokens[:, 0])
        return self.contrastive.image(image_tokens.mean(1))

    def audio_features(self, audio_tokens, audio_mask):
        """Normalised contrastive embedding of the audio tower (mean over real tokens)."""
        w = ops.expand_dims(ops.cast(audio_mask, audio_tokens.dtype), -1)
        pooled = (audio_tokens * w).sum(1) / ops.maximum(w.sum(1), 1.0)
        return self.contrastive.audio(pooled)

    def pair_logits(self, text, text_mask, image, image_mask):
        """Text-image matching logits (B, 2) (not matched, matched) of single-modal token outputs."""
        seq, _ = self.fuse(text, text_mask, image, image_mask)
        sims = (self.text_features(text, text_mask) * self.image_features(image)).sum(-1, keepdims=True)
        return self.pair_head(self.pool(seq), sims, self.contrastive.scale())

    def pair_score(self, text, text_mask, image, image_mask):
        """Text-image pair score (B,): matched minus not-matched logit (= logit of P(matched)), in fp32."""
        logits = self.pair_logits(text, text_mask, image, image_mask)
        return ops.cast(logits[:, 1] - logits[:, 0], ms.float32)

    def matching_logits(self, text, text_mask, image, image_mask, audio, audio_mask):
        """Three-modal matching logits (B, 5) (src.data.labels.ITM_* classes) of single-modal token outputs."""
        seq, _ = self.fuse(text, text_mask, image, image_mask, audio, audio_mask)
        t, i = self.text_features(text, text_mask), self.image_features(image)
        a = self.audio_features(audio, audio_mask)
        sims = ops.stack(((t * i).sum(-1), (t * a).sum(-1), (i * a).sum(-1)), 1)
        return self.itm_head(self.pool(seq), sims, self.contrastive.scale())

    def construct(self, text_ids, text_mask, images, audio, frame_mask):
        """All three modalities through the cross-modal encoder -> (sequence, mask, pooled). Mainly for tools
        (parameter summary, smoke tests); tasks call the methods above."""
        text, t_mask = self.encode_text(text_ids, text_mask)
        image, i_mask = self.encode_image(images)
        aud, a_mask = self.encode_audio(audio, frame_mask)
        seq, mask = self.fuse(text, t_mask, image, i_mask, aud, a_mask)
        return seq, mask, self.pool(seq)


def set_compute_dtype(model, dtype):
    """Run Dense/Embedding/Conv in `dtype` (float16/bfloat16 on Ascend or GPU) with fp32 master weights;
    LayerNorm and softmax stay fp32. float32 leaves the model untouched."""
    dtype = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}[dtype] \
        if isinstance(dtype, str) else dtype
    if dtype == ms.float32:
        return model
    for _, cell in model.cells_and_names():
        if isinstance(cell, nn.LayerNorm):
            cell.to_float(ms.float32)
        elif isinstance(cell, (nn.Dense, nn.Conv1d)):
            cell.to_float(dtype)
    return model


def build_model(model_cfg, vocab_size=None):
    """Build OPTModel from the `model` config section; `vocab_size` fills `model.text.vocab_size: 0`."""
    if model_cfg.text.vocab_size <= 0:
        if not vocab_size:
            raise ValueError("model.text.vocab_size is 0 and no tokenizer vocab size was given")
        model_cfg = model_cfg.with_updates({"text.vocab_size": int(vocab_size)})
    return set_compute_dtype(OPTModel(model_cfg), model_cfg.compute_dtype)
