"""Task heads: masked language modelling (tied to the word embeddings), feature regression, matching, contrastive."""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from .layers import TiedProjection, dense, layer_norm


class MLMHead(nn.Cell):
    """Dense -> GELU -> LayerNorm to the text width, then logits through the (tied) word-embedding table."""

    def __init__(self, width, text_width, vocab_size, eps=1e-5, init_range=0.02):
        super().__init__()
        self.transform = dense(width, text_width, init_range)
        self.act = nn.GELU(approximate=True)
        self.layer_norm = layer_norm(text_width, eps)
        self.project = TiedProjection()
        self.bias = Parameter(ms.Tensor(np.zeros(vocab_size, np.float32)), name="bias")

    def construct(self, x, word_table):
        """x (..., width), word_table (vocab, text_width) -> logits (..., vocab)."""
        return self.project(self.layer_norm(self.act(self.transform(x))), word_table) + self.bias


class RegressionHead(nn.Cell):
    """Dense -> GELU -> LayerNorm -> Dense to the target width (masked vision / audio feature regression)."""

    def __init__(self, width, out_width, eps=1e-5, init_range=0.02):
        super().__init__()
        self.dense = dense(width, width, init_range)
        self.act = nn.GELU(approximate=True)
        self.layer_norm = layer_norm(width, eps)
        self.out = dense(width, out_width, init_range)

    def construct(self, x):
        return self.out(self.layer_norm(self.act(self.dense(x))))


class ContrastiveHead(nn.Cell):
    """Projections of the text, image and audio towers to a shared space and a learnable temperature.

    `logit_scale` holds log(1 / temperature); the scale used is exp(logit_scale) capped at 100 (as in CLIP).
    """

    def __init__(self, text_width, image_width, audio_width, dim, temperature, init_range=0.02):
        super().__init__()
        self.text_proj = dense(text_width, dim, init_range, has_bias=False)
        self.image_proj = dense(image_width, dim, init_range, has_bias=False)
        self.audio_proj = dense(audio_width, dim, init_range, has_bias=False)
        self.logit_scale = Parameter(ms.Tensor(np.array(math.log(1.0 / temperature), np.float32)),
                                     name="logit_scale")

    @staticmethod
    def normalize(x):
        x = ops.cast(x, ms.float32)
        return x / ops.sqrt((x * x).sum(-1, keepdims=True) + 1e-12)

    def scale(self):
        return ops.minimum(ops.exp(self.logit_scale), 100.0)

    def text(self, global_token):
        return self.normalize(self.text_proj(global_token))

    def image(self, global_token):
        return self.normalize(self.image_proj(global_token))

    def audio(self, pooled):
        return self.normalize(self.audio_proj(pooled))
