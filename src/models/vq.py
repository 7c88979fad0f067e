"""The image tokenizer: a convolutional VQ-VAE whose codes are the image decoder's vocabulary.

Encoder: `log2(downsample)` stride-2 4x4 convolutions, a 3x3 convolution, residual blocks and a 1x1 projection to
`code_dim`. Quantiser: nearest codebook entry (squared L2), straight-through gradient to the encoder, commitment loss
`mean((z_e - sg(z_q))^2)`. Decoder: mirror image with stride-2 transposed convolutions. Images are float32
(B, 3, H, W) in the data pipeline's ImageNet normalisation, on both sides.

The codebook is not trained by the optimizer: it follows exponential moving averages of the encoder outputs assigned
to each code (count N_k and sum m_k, decay d, n_k rows of this batch assigned to code k, Laplace smoothing eps over
K codes, n = sum N):

    N_k <- d N_k + (1 - d) n_k     m_k <- d m_k + (1 - d) sum_{i -> k} z_i     e_k = m_k / ((N_k + eps) n / (n + K eps))

Dead codes (unused for `dead_after` steps, or N_k below `dead_threshold`) are re-seeded from the current batch's
encoder outputs (rows picked by a deterministic stride over the batch, shifted every step); on the first training step
every code is seeded this way (data-dependent initialisation). All of this runs inside the GRAPH_MODE train step: the
quantiser's `construct` writes its buffers (codebook, EMA count/sum, per-code age, seeding offset) with `ops.assign`
when the cell is in training mode. These buffers are Parameters with `requires_grad=False`, so the optimizer skips
them, checkpoints save them and resume restores them; no host round-trip per step is needed.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from src.errors import UserError

# Seeding rows are (k * ROW_STRIDE + offset) mod N for code k; the offset moves by OFFSET_STEP each step.
ROW_STRIDE = 7919
OFFSET_STEP = 104729


def _conv(c_in, c_out, kernel, stride=1):
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, pad_mode="pad", padding=(kernel - 1) // 2 if stride == 1
                     else 1, has_bias=True)


def _up(c_in, c_out):
    """4x4 stride-2 transposed convolution: doubles height and width."""
    return nn.Conv2dTranspose(c_in, c_out, 4, stride=2, pad_mode="pad", padding=1, has_bias=True)


class ResidualBlock(nn.Cell):
    """x + conv1x1(relu(conv3x3(relu(x))))."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = _conv(channels, channels, 3)
        self.conv2 = _conv(channels, channels, 1)
        self.relu = nn.ReLU()

    def construct(self, x):
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


class Encoder(nn.Cell):
    def __init__(self, channels, hidden, code_dim, downsample, res_blocks):
        super().__init__()
        layers, width = [], channels
        for _ in range(int(math.log2(downsample))):
            layers += [_conv(width, hidden, 4, stride=2), nn.ReLU()]
            width = hidden
        layers.append(_conv(width, hidden, 3))
        layers += [ResidualBlock(hidden) for _ in range(res_blocks)]
        layers += [nn.ReLU(), _conv(hidden, code_dim, 1)]
        self.layers = nn.SequentialCell(layers)

    def construct(self, images):
        return self.layers(images)


class Decoder(nn.Cell):
    def __init__(self, channels, hidden, code_dim, downsample, res_blocks):
        super().__init__()
        ups = int(math.log2(downsample))
        layers = [_conv(code_dim, hidden, 3)] + [ResidualBlock(hidden) for _ in range(res_blocks)] + [nn.ReLU()]
        for _ in range(ups - 1):
            layers += [_up(hidden, hidden), nn.ReLU()]
        layers.append(_up(hidden, channels) if ups else _conv(hidden, channels, 3))
        self.layers = nn.SequentialCell(layers)

    def construct(self, z):
        return self.layers(z)


class Quantizer(nn.Cell):
    """Nearest-code quantiser with an EMA codebook and dead-code restarts (see the module docstring).

    `construct(z)` with z float32 (B, D, h, w) returns (z_q straight-through (B, D, h, w), codes int32 (B, h, w),
    commitment loss scalar); in training mode it also updates the codebook buffers.
    """

    def __init__(self, codebook_size, code_dim, decay=0.99, epsilon=1e-5, dead_after=100, dead_threshold=0.0,
                 seed=0):
        super().__init__()
        self.codebook_size, self.code_dim = int(codebook_size), int(code_dim)
        self.decay, self.epsilon = float(decay), float(epsilon)
        self.dead_after, self.dead_threshold = int(dead_after), float(dead_threshold)
        init = np.random.default_rng(seed).normal(0.0, 1.0, (codebook_size, code_dim)).astype(np.float32)
        self.embedding = Parameter(Tensor(init), name="embedding", requires_grad=False)
        self.ema_count = Parameter(Tensor(np.ones(codebook_size, np.float32)), name="ema_count", requires_grad=False)
        self.ema_sum = Parameter(Tensor(init.copy()), name="ema_sum", requires_grad=False)
        self.age = Parameter(Tensor(np.zeros(codebook_size, np.float32)), name="age", requires_grad=False)
        self.seeded = Parameter(Tensor(np.array(0.0, np.float32)), name="seeded", requires_grad=False)
        self.offset = Parameter(Tensor(np.array(0, np.int32)), name="seed_offset", requires_grad=False)
        self.code_range = Tensor(np.arange(codebook_size, dtype=np.int32))

    def nearest(self, flat):
        """Index int32 (N,) of the nearest code (squared L2) of each row of `flat` (N, D)."""
        table = self.embedding * 1.0
        distance = (ops.reduce_sum(flat * flat, 1).expand_dims(1) - 2.0 * ops.matmul(flat, table.T)
                    + ops.reduce_sum(table * table, 1).expand_dims(0))
        return ops.cast(ops.argmin(distance, 1), ms.int32)

    def lookup(self, codes):
        """Code vectors (..., D) of int32 `codes` (...)."""
        return ops.gather(self.embedding * 1.0, codes, 0)

    def update(self, flat, codes):
        """One EMA step of the codebook towards the rows of `flat` assigned to each code, then dead-code restarts."""
        decay = self.decay
        onehot = ops.one_hot(codes, self.codebook_size, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        counts = ops.reduce_sum(onehot, 0)
        count = self.ema_count * decay + counts * (1.0 - decay)
        total = ops.matmul(onehot.T, flat)
        summed = self.ema_sum * decay + total * (1.0 - decay)
        n = ops.reduce_sum(count)
        smoothed = (count + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
        table = summed / smoothed.expand_dims(1)
        age = ops.select(counts > 0, ops.zeros_like(self.age), self.age + 1.0)

        dead = ops.broadcast_to(self.seeded < 0.5, (self.codebook_size,))
        if self.dead_after > 0:
            dead = ops.logical_or(dead, age >= self.dead_after)
        if self.dead_threshold > 0:
            dead = ops.logical_or(dead, count < self.dead_threshold)
        rows = flat.shape[0]
        picks = ops.gather(flat, (self.code_range * ROW_STRIDE + self.offset) % rows, 0)
        dead_rows = dead.expand_dims(1)
        table = ops.select(ops.broadcast_to(dead_rows, table.shape), picks, table)
        summed = ops.select(ops.broadcast_to(dead_rows, summed.shape), picks, summed)
        count = ops.select(dead, ops.ones_like(count), count)
        age = ops.select(dead, ops.zeros_like(age), age)

        ops.assign(self.ema_count, count)
        ops.assign(self.ema_sum, summed)
        ops.assign(self.embedding, table)
        ops.assign(self.age, age)
        ops.assign(self.seeded, ops.ones_like(self.seeded))
        ops.assign(self.offset, (self.offset + OFFSET_STEP) % rows)
        return dead

    def construct(self, z):
        b, d, h, w = z.shape
        flat = ops.transpose(z, (0, 2, 3, 1)).reshape(-1, d)
        codes = self.nearest(ops.stop_gradient(flat))
        quantized = ops.stop_gradient(self.lookup(codes))
        commitment = ops.reduce_mean(ops.square(flat - quantized))
        if self.training:
            self.update(ops.stop_gradient(flat), codes)
        straight = flat + ops.stop_gradient(quantized - flat)
        z_q = ops.transpose(straight.reshape(b, h, w, d), (0, 3, 1, 2))
        return z_q, codes.reshape(b, h, w), commitment


class _EncodeCodes(nn.Cell):
    """images -> codes, as one graph (shares the VQVAE's sub-cells without renaming their parameters)."""

    def __init__(self, vq):
        super().__init__(auto_prefix=False)
        self.encoder, self.quantizer = vq.encoder, vq.quantizer

    def construct(self, images):
        z = self.encoder(images)
        b, d, h, w = z.shape
        codes = self.quantizer.nearest(ops.transpose(z, (0, 2, 3, 1)).reshape(-1, d))
        return codes.reshape(b, h, w)


class _DecodeCodes(nn.Cell):
    """codes -> images, as one graph."""

    def __init__(self, vq):
        super().__init__(auto_prefix=False)
        self.quantizer, self.decoder = vq.quantizer, vq.decoder

    def construct(self, codes):
        z = ops.transpose(self.quantizer.lookup(codes), (0, 3, 1, 2))
        return self.decoder(z)


class VQVAE(nn.Cell):
    """`construct(images) -> (reconstruction, codes int32 (B, h, w), commitment loss)`; see `encode` / `decode`."""

    def __init__(self, image_size, channels, hidden, code_dim, codebook_size, downsample, res_blocks, decay,
                 epsilon, dead_after, dead_threshold, seed=0):
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise UserError(f"vq.downsample must be a power of 2 (1, 2, 4, 8, ...), got {downsample}")
        if image_size % downsample:
            raise UserError(f"vq.image_size {image_size} is not divisible by vq.downsample {downsample}")
        if not 0.0 <= decay < 1.0:
            raise UserError(f"vq.ema_decay must be in [0, 1), got {decay}")
        self.image_size, self.downsample = int(image_size), int(downsample)
        self.codebook_size = int(codebook_size)
        self.encoder = Encoder(channels, hidden, code_dim, downsample, res_blocks)
        self.quantizer = Quantizer(codebook_size, code_dim, decay, epsilon, dead_after, dead_threshold, seed)
        self.decoder = Decoder(channels, hidden, code_dim, downsample, res_blocks)
        self._graphs = {}

    @property
    def grid_size(self):
        """Codes per side for images of `image_size`."""
        return self.image_size // self.downsample

    def construct(self, images):
        z_q, codes, commitment = self.quantizer(self.encoder(images))
        return self.decoder(z_q), codes, commitment

    def _graph(self, kind):
        if kind not in self._graphs:
            self._graphs[kind] = (_EncodeCodes if kind == "encode" else _DecodeCodes)(self)
            self._graphs[kind].set_train(False)
        return self._graphs[kind]

    def encode(self, images):
        """Codes int32 numpy (B, H/downsample, W/downsample) of float32 images (B, 3, H, W), normalised."""
        images = np.asarray(images.asnumpy() if isinstance(images, Tensor) else images, np.float32)
        if images.ndim != 4 or images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise UserError(f"encode: expected images (B, C, H, W) with H and W divisible by {self.downsample}, "
                            f"got shape {images.shape}")
        return self._graph("encode")(Tensor(images)).asnumpy().astype(np.int32)

    def decode(self, codes):
        """Images float32 numpy (B, 3, h*downsample, w*downsample), normalised, of int codes (B, h, w)."""
        codes = np.asarray(codes.asnumpy() if isinstance(codes, Tensor) else codes)
        if codes.ndim != 3:
            raise UserError(f"decode: expected codes (B, h, w), got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise UserError(f"decode: codes must lie in [0, {self.codebook_size}), got values "
                            f"{int(codes.min())}..{int(codes.max())}; were image-decoder tokens passed without "
                            "codes_from_tokens?")
        return self._graph("decode")(Tensor(codes.astype(np.int32))).asnumpy().astype(np.float32)


class ReconstructionLoss(nn.Cell):
    """The training objective: mean squared reconstruction error + commitment * commitment loss."""

    input_names = ("image",)

    def __init__(self, vq, commitment):
        super().__init__(auto_prefix=False)
        self.vq, self.commitment = vq, float(commitment)

    def construct(self, images):
        reconstruction, _, commitment = self.vq(images)
        return ops.reduce_mean(ops.square(reconstruction - images)) + self.commitment * commitment


def build_vq(vq_cfg):
    """The VQVAE of a `vq:` config section."""
    c = vq_cfg
    return VQVAE(c.image_size, c.channels, c.hidden, c.code_dim, c.codebook_size, c.downsample, c.res_blocks,
                 c.ema_decay, c.epsilon, c.dead_after, c.dead_threshold)


def decode_to_png(vq, codes, path, columns=None):
    """Decode int codes (h, w) or (B, h, w) with `vq` and write them as one PNG (a row / grid of images)."""
    from src.data.transforms import to_uint8, write_png
    codes = np.asarray(codes)
    return write_png(to_uint8(vq.decode(codes[None] if codes.ndim == 2 else codes)), path, columns)


def psnr(reference, reconstruction):
    """Per-image PSNR in dB of uint8 images (B, H, W, 3) on the 0-255 scale (inf for identical images)."""
    diff = np.asarray(reference, np.float64) - np.asarray(reconstruction, np.float64)
    mse = np.mean(diff.reshape(len(diff), -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def codebook_usage(codes, codebook_size):
    """{"perplexity": exp(entropy of the code histogram), "used_fraction": share of codes used at least once,
    "used_codes": their number} over all of `codes`."""
    counts = np.bincount(np.asarray(codes, np.int64).reshape(-1), minlength=codebook_size).astype(np.float64)
    share = counts / max(counts.sum(), 1.0)
    nonzero = share[share > 0]
    used = int(np.count_nonzero(counts))
    return {"perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))), "used_fraction": used / codebook_size,
            "used_codes": used}
