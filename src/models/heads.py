"""Task heads: masked language modelling (tied to the word embeddings), feature regression, matching, contrastive."""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, nn, ops

from .layers import TiedProjection, activation_cell, dense, layer_norm


class MLMHead(nn.Cell):
    """Dense -> GELU (or ReLU, model.heads.mlm_activation, as the released OPT was trained) -> LayerNorm to the text
    width, then logits through the (tied) word-embedding table."""

    def __init__(self, width, text_width, vocab_size, eps=1e-5, init_range=0.02, activation="gelu"):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"model.heads.mlm_activation must be 'gelu' or 'relu', got {activation!r}")
        self.transform = dense(width, text_width, init_range)
        self.act = activation_cell("gelu" if activation == "gelu" else "relu")
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
        self.act = activation_cell("gelu")
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


class MatchingHead(nn.Cell):
    """Matching logits from the fused [CLS] and from how much the modality towers agree.

        logits = Dense(pooled) + gain * scale * (sims - centre) @ pattern.T

    `sims` (B, P) are the cosines between the contrastive features of the P modality pairs the head judges (text-image;
    and text-audio, image-audio for three-modal matching); `scale` is the contrastive head's inverse temperature.
    `centre` (P,) is the running mean of the sims seen in training (an exponential moving average with decay
    `centre_decay`, bias-corrected, updated in-graph when the cell is training and including the current batch), so a
    pair counts as agreeing when its towers agree more than a typical training pair does; it is a buffer
    (`requires_grad=False`) that checkpoints carry. `pattern` (classes, P) is fixed: +1 where the class says the two
    modalities of a pair belong together and -1 where it says they do not.

    `gain` starts at 0, so an untrained head is exactly the Dense head and random towers add no noise; it is stored
    divided by GAIN_STEP (an optimizer step moves it GAIN_STEP times further), so it can reach a useful size within
    the first hundred steps once the towers agree on matching pairs, and stays near 0 while they do not. Adam moves
    a parameter by at most about the learning rate per step, so with GAIN_STEP 10 the demo's 56 matching steps at
    5e-4 left the gain at 0.05 and the towers' agreement added at most ~0.2 to a logit; at 100 the demo's matching
    loss falls 29% instead of 8%.

    Why: a cross-encoder learns to compare modalities from random negatives only after many thousands of steps; the
    towers' agreement, trained by the contrastive task, lets matching learn from the first few hundred, and the fused
    [CLS] adds what the towers miss.
    """

    GAIN_STEP = 100.0

    def __init__(self, width, pattern, init_range=0.02, centre_decay=0.9):
        super().__init__()
        pattern = np.asarray(pattern, np.float32)
        self.dense = dense(width, pattern.shape[0], init_range)
        self.pattern = ms.Tensor(pattern)
        self.gain = Parameter(ms.Tensor(np.array(0.0, np.float32)), name="gain")
        self.decay = float(centre_decay)
        self.centre_sum = Parameter(ms.Tensor(np.zeros(pattern.shape[1], np.float32)), name="centre_sum",
                                    requires_grad=False)
        self.centre_weight = Parameter(ms.Tensor(np.array(0.0, np.float32)), name="centre_weight",
                                       requires_grad=False)

    def centre(self, sims):
        """The bias-corrected running mean of the sims; in training, updated with this batch first."""
        if self.training:
            batch_mean = ops.stop_gradient(sims.mean(0))
            total = self.centre_sum * self.decay + batch_mean * (1.0 - self.decay)
            weight = self.centre_weight * self.decay + (1.0 - self.decay)
            ops.assign(self.centre_sum, total)
            ops.assign(self.centre_weight, weight)
            return total / weight
        return self.centre_sum / ops.maximum(self.centre_weight, 1e-12)

    def construct(self, pooled, sims, scale):
        agreement = (ops.cast(sims, ms.float32) - self.centre(sims)) * (scale * self.gain * self.GAIN_STEP)
        return ops.cast(self.dense(pooled), ms.float32) + ops.matmul(agreement, self.pattern.T)
