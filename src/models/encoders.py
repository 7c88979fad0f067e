"""The three single-modal encoders. Each returns (tokens (B, L, width), mask (B, L)); token 0 of the text and image
encoders is a global token ([CLS] / the ViT's global token) that the contrastive towers read.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from .layers import (EncoderStack, activation_cell, dense, dropout_layer, embedding, grid_position_embedding,
                     layer_norm)


def positions(length):
    return ms.Tensor(np.arange(length, dtype=np.int32)[None])


def tower_eps(cfg, tower_cfg):
    """A tower's LayerNorm eps: its own `layer_norm_eps`, or the model's when that is null."""
    return cfg.layer_norm_eps if tower_cfg.layer_norm_eps is None else float(tower_cfg.layer_norm_eps)


class TextEncoder(nn.Cell):
    """Word + position (+ token-type 0) embeddings, LayerNorm, dropout, then `layers` transformer blocks (0 allowed).

    `post_ln` gives BERT's layer order (and no final LayerNorm); `type_vocab_size` > 0 adds row 0 of a token-type
    table to every token (BERT's segment A), so a pretrained BERT's embeddings load unchanged.
    """

    def __init__(self, cfg, text_cfg):
        super().__init__()
        c = text_cfg
        eps = tower_eps(cfg, c)
        self.max_len = c.max_len
        self.word_embeddings = embedding(c.vocab_size, c.hidden, cfg.initializer_range)
        self.position_embeddings = embedding(c.max_len, c.hidden, cfg.initializer_range)
        self.use_types = c.type_vocab_size > 0
        if self.use_types:
            self.token_type_embeddings = embedding(c.type_vocab_size, c.hidden, cfg.initializer_range)
        self.layer_norm = layer_norm(c.hidden, eps)
        self.dropout = dropout_layer(cfg.dropout)
        self.encoder = EncoderStack(c.hidden, c.layers, c.heads, c.ffn, cfg.dropout, cfg.attention_dropout,
                                    eps, cfg.initializer_range, final_norm=not c.post_ln, post_ln=c.post_ln,
                                    activation=c.activation)
        self.width = c.hidden

    def construct(self, ids, mask):
        x = self.word_embeddings(ids) + self.position_embeddings(positions(ids.shape[1]))
        if self.use_types:
            x = x + self.token_type_embeddings.embedding_table[0]
        x = self.dropout(self.layer_norm(x))
        return self.encoder(x, mask), mask


def stem_widths(patch_size, hidden, channels=()):
    """Widths of a conv stem's stride-2 stages: one stage per halving of `patch_size` (a power of 2). `channels` as
    given, or by default 32, 64, 128, ... capped at `hidden`."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"model.image.stem conv needs a power-of-2 patch_size (one stride-2 stage per halving), "
                         f"got {patch_size}")
    if not channels:
        return [min(32 << i, hidden) for i in range(stages)]
    if len(channels) != stages:
        raise ValueError(f"model.image.stem_channels has {len(channels)} widths but patch_size {patch_size} needs "
                         f"{stages} stride-2 stages (one per halving); give {stages} widths or [] for the default")
    return list(channels)


class ConvStem(nn.Cell):
    """Patch embedding by convolution: stride-2 3x3 conv + BatchNorm + ReLU stages (image side / patch_size after
    them), then a 1x1 conv to `hidden`. (B, C, S, S) -> (B, grid*grid, hidden), cells in row-major order like
    ImageEncoder.patchify. BatchNorm uses batch statistics in training and its moving averages in eval mode
    (`set_train(False)`, which every evaluation and inference path sets)."""

    def __init__(self, in_channels, hidden, widths):
        super().__init__()
        stages, c_in = [], in_channels
        for width in widths:
            stages += [nn.Conv2d(c_in, width, 3, stride=2, pad_mode="pad", padding=1, has_bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
            c_in = width
        self.stages = nn.SequentialCell(stages)
        self.proj = nn.Conv2d(c_in, hidden, 1, has_bias=True)

    def construct(self, images):
        x = self.proj(self.stages(images))
        b, c = x.shape[0], x.shape[1]
        return ops.transpose(ops.reshape(x, (b, c, -1)), (0, 2, 1))


class ImageEncoder(nn.Cell):
    """ViT with a global token (pixels mode), or region features + boxes (features mode).

    Pixels: image (B, C, S, S) -> patches (B, Np, C*p*p) -> linear -> [global | patches] + positions -> blocks;
    with `stem: conv` a ConvStem replaces the patch split and the linear layer.
    Features: feats (B, R, D) + boxes (B, R, box_dim) -> LN(linear + linear) (or, region_embedding two_norms, the
    sum of two LNs) -> [global | regions] -> blocks; the global token is a learned vector plus the masked mean of the
    regions.
    `pre_norm` adds a LayerNorm before the blocks (CLIP's pre_layrnorm); `activation` and `layer_norm_eps` as in
    model.image.
    `masked` (B, Np or R) marks tokens replaced by a learned mask embedding (masked vision modelling).
    Returns tokens (B, 1 + N, hidden) and mask (B, 1 + N).
    """

    def __init__(self, cfg, image_cfg):
        super().__init__()
        c = image_cfg
        self.mode = c.mode
        if c.mode not in ("pixels", "features"):
            raise ValueError(f"model.image.mode must be 'pixels' or 'features', got {c.mode!r}")
        init = cfg.initializer_range
        eps = tower_eps(cfg, c)
        if c.mode == "pixels":
            if c.image_size % c.patch_size:
                raise ValueError(f"model.image.image_size {c.image_size} is not a multiple of patch_size "
                                 f"{c.patch_size}")
            self.grid = c.image_size // c.patch_size
            self.patch = c.patch_size
            self.num_tokens = self.grid * self.grid
            if c.stem == "linear":
                self.patch_embed = dense(c.channels * c.patch_size * c.patch_size, c.hidden, init)
            elif c.stem == "conv":
                self.conv_stem = ConvStem(c.channels, c.hidden, stem_widths(c.patch_size, c.hidden, c.stem_channels))
            else:
                raise ValueError(f"model.image.stem must be 'linear' or 'conv', got {c.stem!r}")
            self.stem = c.stem
        else:
            self.num_tokens = c.max_regions
            self.feature_embed = dense(c.feature_dim, c.hidden, init)
            self.box_embed = dense(c.box_dim, c.hidden, init)
            self.feature_norm = layer_norm(c.hidden, eps)
            if c.region_embedding not in ("fused", "two_norms"):
                raise ValueError(f"model.image.region_embedding must be 'fused' or 'two_norms', got "
                                 f"{c.region_embedding!r}")
            self.two_norms = c.region_embedding == "two_norms"
            if self.two_norms:
                self.box_norm = layer_norm(c.hidden, eps)
        self.global_token = Parameter(initializer(Normal(init), (1, 1, c.hidden)), name="global_token")
        self.mask_token = Parameter(initializer(Normal(init), (1, 1, c.hidden)), name="mask_token")
        if c.position_init not in ("sincos", "normal"):
            raise ValueError(f"model.image.position_init must be 'sincos' or 'normal', got {c.position_init!r}")
        # side of the patch grid whose positions start from sincos_2d; None: N(0, init) rows (regions have no grid)
        self.position_grid = self.grid if c.mode == "pixels" and c.position_init == "sincos" else None
        self.position_embeddings = (grid_position_embedding(self.position_grid, c.hidden) if self.position_grid else
                                    embedding(self.num_tokens + 1, c.hidden, init))
        self.dropout = dropout_layer(cfg.dropout)
        self.pre_norm = layer_norm(c.hidden, eps) if c.pre_norm else nn.Identity()
        self.encoder = EncoderStack(c.hidden, c.layers, c.heads, c.ffn, cfg.dropout, cfg.attention_dropout,
                                    eps, init, activation=c.activation)
        self.width = c.hidden
        self.feature_dim = c.feature_dim

    def patchify(self, images):
        """(B, C, S, S) -> (B, grid*grid, C*p*p), patches in row-major order, each flattened as (C, py, px)."""
        b, ch = images.shape[0], images.shape[1]
        g, p = self.grid, self.patch
        x = ops.reshape(images, (b, ch, g, p, g, p))
        x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
        return ops.reshape(x, (b, g * g, ch * p * p))

    def apply_mask_token(self, x, masked):
        if masked is None:
            return x
        m = ops.expand_dims(ops.cast(masked, x.dtype), -1)
        return x * (1.0 - m) + self.mask_token * m

    def construct(self, images=None, masked=None, feats=None, boxes=None, region_mask=None):
        if self.mode == "pixels":
            x = self.patch_embed(self.patchify(images)) if self.stem == "linear" else self.conv_stem(images)
            token_mask = ops.ones((x.shape[0], self.num_tokens), ms.float32)
            glob = ops.tile(self.global_token, (x.shape[0], 1, 1))
        else:
            token_mask = ops.cast(region_mask, ms.float32)
            if self.two_norms:
                x = self.feature_norm(self.feature_embed(feats)) + self.box_norm(self.box_embed(boxes))
            else:
                x = self.feature_norm(self.feature_embed(feats) + self.box_embed(boxes))
            weights = ops.expand_dims(token_mask, -1)
            mean = (x * weights).sum(1, keepdims=True) / ops.maximum(weights.sum(1, keepdims=True), 1.0)
            glob = self.global_token + mean
        x = self.apply_mask_token(x, masked)
        x = ops.concat((ops.cast(glob, x.dtype), x), 1) + self.position_embeddings(positions(self.num_tokens + 1))
        mask = ops.concat((ops.ones((x.shape[0], 1), ms.float32), token_mask), 1)
        return self.encoder(self.dropout(self.pre_norm(x)), mask), mask


class AudioEncoder(nn.Cell):
    """Log-mel frames through a strided conv front end and transformer blocks (mel mode), or pre-extracted frame
    features through a linear layer and blocks (features mode).

    audio (B, T, n_mels or feature_dim), frame_mask (B, T). Padded frames are zeroed before the convolutions, so they
    never reach real tokens. Mel mode reduces time by `subsample` (token t starts at frame t*subsample; its mask is
    frame_mask[:, ::subsample]). `masked` (B, tokens) marks tokens replaced by a learned mask embedding.
    Returns tokens (B, L, hidden) and the token mask (B, L).
    """

    def __init__(self, cfg, audio_cfg):
        super().__init__()
        c = audio_cfg
        self.mode = c.mode
        init = cfg.initializer_range
        if c.mode == "mel":
            factor, convs = c.subsample, []
            if factor < 1 or factor & (factor - 1):
                raise ValueError(f"model.audio.subsample must be a power of 2, got {factor}")
            if c.max_frames % factor:
                raise ValueError(f"model.audio.max_frames {c.max_frames} is not a multiple of subsample {factor}")
            channels = c.n_mels
            while factor > 1:
                convs += [nn.Conv1d(channels, c.hidden, 3, stride=2, pad_mode="pad", padding=1, has_bias=True,
                                    weight_init=Normal(init)), activation_cell("gelu")]
                channels, factor = c.hidden, factor // 2
            self.subsample = c.subsample
            self.front = nn.SequentialCell(convs) if convs else nn.Identity()
            self.input_proj = dense(channels, c.hidden, init)
            self.num_tokens = c.max_frames // c.subsample
        elif c.mode == "features":
            self.subsample = 1
            self.input_proj = dense(c.feature_dim, c.hidden, init)
            self.num_tokens = c.max_frames
        else:
            raise ValueError(f"model.audio.mode must be 'mel' or 'features', got {c.mode!r}")
        self.mask_token = Parameter(initializer(Normal(init), (1, 1, c.hidden)), name="mask_token")
        self.position_embeddings = embedding(self.num_tokens, c.hidden, init)
        self.layer_norm = layer_norm(c.hidden, cfg.layer_norm_eps)
        self.dropout = dropout_layer(cfg.dropout)
        self.encoder = EncoderStack(c.hidden, c.layers, c.heads, c.ffn, cfg.dropout, cfg.attention_dropout,
                                    cfg.layer_norm_eps, init)
        self.width = c.hidden

    def token_mask(self, frame_mask):
        frame_mask = ops.cast(frame_mask, ms.float32)
        return frame_mask[:, ::self.subsample] if self.subsample > 1 else frame_mask

    def construct(self, audio, frame_mask, masked=None):
        x = audio * ops.expand_dims(ops.cast(frame_mask, audio.dtype), -1)
        if self.mode == "mel":
            x = ops.transpose(self.front(ops.transpose(x, (0, 2, 1))), (0, 2, 1))
        x = self.input_proj(x)
        if masked is not None:
            m = ops.expand_dims(ops.cast(masked, x.dtype), -1)
            x = x * (1.0 - m) + self.mask_token * m
        x = self.layer_norm(x + self.position_embeddings(positions(self.num_tokens)))
        mask = self.token_mask(frame_mask)
        return self.encoder(self.dropout(x), mask), mask
