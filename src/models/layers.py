"""Transformer building blocks: attention (written from matmul + softmax, with a KV cache), feed-forward, pre-LN
encoder and decoder blocks.

Masks follow one convention everywhere: a key-padding mask is (B, S) with 1 for real positions and 0 for padding; it
becomes an additive bias of -1e4 on the attention scores (exp underflows to exactly 0 in fp32, so padded keys never
change a real output). Softmax and LayerNorm always run in fp32, whatever the compute dtype.
"""
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import Normal

NEG_INF = -1e4


def dense(n_in, n_out, init_range=0.02, has_bias=True):
    """A Dense layer with the model's weight initialisation (weights N(0, init_range), zero bias)."""
    return Dense(n_in, n_out, weight_init=Normal(init_range), has_bias=has_bias)


class BiasAdd(nn.Cell):
    """x (N, C) + bias (C) whose backward sums the gradient over the rows as one matmul with a row of ones. On CPU,
    MindSpore's BiasAddGrad kernel made a 768 -> 3072 Dense layer's training step 31% slower than the same layer
    without a bias (at 6000 rows: 849 against 648 ms; with this backward 707 ms). A ReduceSum over the rows was as
    fast there but 20% slower than nn.Dense on 768 -> 768 layers, where the matmul is 16% faster
    (docs/experiments/2026-12-07-bias-gradient-recompute-dropout.md)."""

    def construct(self, x, bias):
        return ops.bias_add(x, bias)

    def bprop(self, x, bias, out, dout):
        ones = ops.ones((1, dout.shape[0]), dout.dtype)
        return dout, ops.reshape(ops.matmul(ones, dout), bias.shape)


class Dense(nn.Dense):
    """nn.Dense (same parameters, same primitives for tensor parallelism to shard) whose bias runs through `BiasAdd`.
    `lean_backward` False runs nn.Dense's own bias_add primitive: the sharding of tensor parallelism sets it, since it
    shards that primitive (src.engine.parallel.apply_strategies)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lean_backward = True
        self.lean_bias_add = BiasAdd()

    def construct(self, x):
        shape = x.shape
        if len(shape) != 2:
            x = ops.reshape(x, (-1, shape[-1]))
        x = self.matmul(x, self.weight)
        if self.has_bias:
            x = self.lean_bias_add(x, self.bias) if self.lean_backward else self.bias_add(x, self.bias)
        if self.activation_flag:
            x = self.activation(x)
        if len(shape) != 2:
            x = ops.reshape(x, shape[:-1] + (x.shape[-1],))
        return x


def dropout_layer(p):
    """nn.Dropout(p), or the identity at p = 0. Give every call site a layer of its own: the trainer's StepDropout
    draws its mask from (layer, step), so one layer called twice in a step would drop the same elements twice."""
    return nn.Dropout(p=p) if p > 0 else nn.Identity()


def embedding(n_rows, width, init_range=0.02):
    return nn.Embedding(n_rows, width, embedding_table=Normal(init_range))


def sincos_2d(grid, width):
    """Fixed 2-D sine-cosine position table (grid*grid, width), rows in row-major cell order, values in [-1, 1].

    The first half of the channels encodes the row, the second half the column; each half is sin/cos pairs at
    wavelengths 1 .. 10000 (the ViT/MAE construction). `width` must be a multiple of 4.
    """
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine position table needs a width divisible by 4, got {width}")
    quarter = width // 4
    freq = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.divmod(np.arange(grid * grid), grid)

    def encode(coord):
        angle = np.outer(coord, freq)
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    return np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)


def sinusoid_table(length, width, min_timescale=1.0, max_timescale=1.0e4):
    """The original OPT decoders' fixed position table (length, width): sines in the first half of the channels,
    cosines in the second, at timescales spaced geometrically from `min_timescale` to `max_timescale`."""
    half = width // 2
    increment = math.log(max_timescale / min_timescale) / max(half - 1, 1)
    inv = min_timescale * np.exp(np.arange(half, dtype=np.float64) * -increment)
    angle = np.arange(length, dtype=np.float64)[:, None] * inv[None]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def grid_position_embedding(grid, width, leading=1, rows=None):
    """A learned position embedding whose rows `leading` .. `leading + grid*grid - 1` start from sincos_2d (one per
    patch or image token, row-major) and whose other rows (global token before, end-of-image after; `rows` in all,
    default leading + grid*grid) start at zero. With N(0, 0.02) rows the position signal is ~20x weaker than the
    patch content and barely moves in a short run; this start makes left / right / top / bottom readable from the
    first step."""
    rows = leading + grid * grid if rows is None else rows
    if rows < leading + grid * grid:
        raise ValueError(f"{rows} position rows cannot hold {leading} leading tokens and a {grid}x{grid} grid")
    table = np.zeros((rows, width), np.float32)
    table[leading:leading + grid * grid] = sincos_2d(grid, width)
    return nn.Embedding(rows, width, embedding_table=ms.Tensor(table))


def layer_norm(width, eps):
    return LayerNorm(width, eps)


class NativeLayerNormCore(nn.Cell):
    """LayerNorm over the last axis (MindSpore's kernel) whose backward is src/native/layer_norm_grad.cc: on
    CPU MindSpore's LayerNormGrad took 0.89 s of a base-model step (8%), about 4 times its forward; the native
    backward recomputes the row statistics from x and runs on every core
    (docs/experiments/2026-12-07-native-kernels.md)."""

    def __init__(self, eps):
        super().__init__()
        from src.native.kernels import kernel_threads, layer_norm_grad_op
        self.norm = ops.LayerNorm(-1, -1, eps)
        self.grad_op = layer_norm_grad_op()
        self.fixed = ms.Tensor(np.array([eps, kernel_threads()], np.float32))

    def construct(self, x, gamma, beta):
        return self.norm(x, gamma, beta)[0]

    def bprop(self, x, gamma, beta, out, dout):
        return self.grad_op(x, dout, gamma, self.fixed)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (same parameters and forward) whose backward runs NativeLayerNormCore where it
    can (CPU, and the native kernel builds); `lean_backward` False runs nn.LayerNorm's own primitive, as the sharding
    of tensor parallelism requires (src.engine.parallel.apply_strategies)."""

    def __init__(self, width, eps):
        super().__init__((width,), epsilon=eps)
        from src.native.kernels import native_kernels_usable
        self.lean_backward = native_kernels_usable("layer_norm_grad")
        self.native_core = NativeLayerNormCore(eps) if self.lean_backward else None

    def construct(self, x):
        if self.lean_backward:
            return self.native_core(x, self.gamma, self.beta)
        return super().construct(x)


def padding_bias(mask):
    """(B, S) mask of 1/0 -> (B, 1, 1, S) additive bias: 0 where the key is real, -1e4 where it is padding."""
    mask = ops.cast(mask, ms.float32)
    return ops.expand_dims(ops.expand_dims((1.0 - mask) * NEG_INF, 1), 1)


class TiedProjection(nn.Cell):
    """x (..., D) @ table (V, D)^T as one 2-D MatMul. On CPU, ops.matmul of a 3-D tensor with a transposed table is
    ~30x slower (measured 553 ms vs 19 ms for a 21128 x 768 table); it is also the primitive tensor parallelism
    shards."""

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x, table):
        flat = self.matmul(ops.reshape(x, (-1, x.shape[-1])), table)
        return ops.reshape(flat, x.shape[:-1] + (table.shape[0],))


def causal_bias(length):
    """(1, 1, L, L) additive bias that hides future positions."""
    allowed = np.tril(np.ones((length, length), np.float32))
    return ms.Tensor(((1.0 - allowed) * NEG_INF)[None, None], ms.float32)


class RecomputedAttention(nn.Cell):
    """softmax(q k^T * scale + bias) [dropout by `keep`] @ v, whose backward keeps no score-sized tensor.

    Plain autodiff of the same expression keeps the probabilities for the backward pass, and on CPU MindSpore's
    SoftmaxGrad and broadcasting arithmetic kernels (a (B,1,1,S) bias added to (B,h,Lq,S) scores) hold score-sized
    buffers of their own outside the memory pool, one set per layer: measured on 10 layers of 375 tokens at batch 8,
    271 MB per layer, where this cell needs 10 MB. Here the forward keeps only its inputs (q, k, v, the bias and the
    1-byte dropout mask) and the backward recomputes the probabilities from them (one more q k^T and softmax: under 3%
    of a block's FLOPs) and forms the softmax gradient p * (dp - rowsum) from same-shape operations, where
    rowsum = sum_j dp_ij p_ij equals dout_i . out_i (FlashAttention's identity, with dropout too), a reduction over the
    head width instead of over the keys. Every broadcast is explicit (broadcast_to), and the recomputation depends on
    the incoming gradient so that common subexpression elimination cannot merge it with the forward's (which would
    keep the probabilities again). `biased=False` takes no bias (the argument is ignored). Softmax runs in fp32
    whatever the compute dtype; outputs equal the plain expression's exactly.
    """

    def __init__(self, scale, keep_prob=1.0, biased=True):
        super().__init__()
        self.scale, self.keep_prob, self.biased = float(scale), float(keep_prob), bool(biased)
        self.drop = self.keep_prob < 1.0
        self.scores = ops.BatchMatMul(transpose_b=True)       # q k^T
        self.context = ops.BatchMatMul()                      # p v
        self.grad_of_v = ops.BatchMatMul(transpose_a=True)    # p^T dout
        self.grad_of_p = ops.BatchMatMul(transpose_b=True)    # dout v^T
        self.grad_of_q = ops.BatchMatMul()                    # ds k
        self.grad_of_k = ops.BatchMatMul(transpose_a=True)    # ds^T q
        self.softmax = ops.Softmax(-1)

    def probs(self, q, k, bias):
        scores = ops.cast(self.scores(q, k) * self.scale, ms.float32)
        if self.biased:
            scores = scores + ops.broadcast_to(bias, scores.shape)
        return self.softmax(scores)

    def dropped(self, x, keep):
        return x * (ops.cast(keep, x.dtype) * (1.0 / self.keep_prob))

    def construct(self, q, k, v, bias, keep):
        p = self.probs(q, k, bias)
        if self.drop:
            p = self.dropped(p, keep)
        return self.context(ops.cast(p, v.dtype), v)

    def bprop(self, q, k, v, bias, keep, out, dout):
        p = self.probs(ops.depend(q, dout), k, bias)
        used = self.dropped(p, keep) if self.drop else p
        dv = self.grad_of_v(ops.cast(used, v.dtype), dout)
        dp = ops.cast(self.grad_of_p(dout, v), ms.float32)
        if self.drop:
            dp = self.dropped(dp, keep)
        row = ops.sum(ops.cast(dout, ms.float32) * ops.cast(out, ms.float32), -1, keepdim=True)
        row = ops.broadcast_to(row, dp.shape)
        ds = ops.cast(p * (dp - row) * self.scale, q.dtype)
        return self.grad_of_q(ds, k), self.grad_of_k(ds, q), dv, ops.zeros_like(bias), ops.zeros_like(keep)


class NativeAttentionCore(RecomputedAttention):
    """RecomputedAttention's computation (its MatMuls, outputs and recomputing backward) with the scale, bias,
    softmax and dropout of the forward, and of the backward, each one native kernel
    (src/native/attention_softmax.cc): a pass per row, where MindSpore's kernels made a broadcast copy of the bias,
    a softmax and a mask product, each a pass over a score-sized tensor. The dropout mask comes as keys
    (src.engine.trainer.StepDropout.mask_keys: row keys, column keys, threshold) and is formed inside the kernels, so
    no mask is drawn or kept; without dropout the keys are placeholders. Runs on CPU, in training (the model's
    evaluation and exported graphs keep MindSpore's own kernels); the exp of the softmax is a polynomial within about
    1 ulp of fp32 exp (docs/experiments/2026-12-08-native-attention-gelu-dropout.md)."""

    def __init__(self, scale, keep_prob=1.0):
        super().__init__(scale, keep_prob)
        from src.native.kernels import attention_softmax_ops, kernel_threads
        self.native_softmax, self.native_softmax_grad = attention_softmax_ops()
        self.fixed = ms.Tensor(np.array([scale, 1.0 / keep_prob, kernel_threads(), keep_prob < 1.0], np.float32))

    def construct(self, q, k, v, bias, row_keys, column_keys, threshold):
        scores = ops.cast(self.scores(q, k), ms.float32)
        used = self.native_softmax(scores, ops.cast(bias, ms.float32), row_keys, column_keys, threshold, self.fixed)
        return self.context(ops.cast(used, v.dtype), v)

    def bprop(self, q, k, v, bias, row_keys, column_keys, threshold, out, dout):
        scores = ops.cast(self.scores(ops.depend(q, dout), k), ms.float32)
        dp = ops.cast(self.grad_of_p(dout, v), ms.float32)
        row = ops.sum(ops.cast(dout, ms.float32) * ops.cast(out, ms.float32), -1)
        used, ds = self.native_softmax_grad(scores, ops.cast(bias, ms.float32), row_keys, column_keys, threshold,
                                            self.fixed, dp, row)
        ds = ops.cast(ds, q.dtype)
        return (self.grad_of_q(ds, k), self.grad_of_k(ds, q), self.grad_of_v(ops.cast(used, v.dtype), dout),
                ops.zeros_like(bias), ops.zeros_like(row_keys), ops.zeros_like(column_keys), ops.zeros_like(threshold))


class Attention(nn.Cell):
    """Multi-head attention. Self-attention when `memory` is None, cross-attention otherwise.

    `bias` is an additive score bias broadcastable to (B, heads, Lq, Lk). `step` runs one incremental decoding step
    against a static-size KV cache (see `step`).
    """

    def __init__(self, width, heads, dropout=0.0, init_range=0.02, kv_width=None):
        super().__init__()
        if width % heads:
            raise ValueError(f"attention width {width} is not divisible by {heads} heads")
        kv_width = kv_width or width
        self.heads, self.head_dim = heads, width // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.query = dense(width, width, init_range)
        self.key = dense(kv_width, width, init_range)
        self.value = dense(kv_width, width, init_range)
        self.out = dense(width, width, init_range)
        self.dropout = dropout_layer(dropout)
        self.dropout_p = float(dropout)
        # the memory-lean path (see RecomputedAttention); the sharding of tensor parallelism turns it off, since it
        # shards the two primitives below
        self.lean_backward = True
        self.core = RecomputedAttention(self.scale)
        self.dropped_core = RecomputedAttention(self.scale, 1.0 - dropout) if dropout > 0 else None
        self.unbiased_core = RecomputedAttention(self.scale, biased=False)
        self.unbiased_dropped_core = RecomputedAttention(self.scale, 1.0 - dropout, False) if dropout > 0 else None
        self.no_bias = ms.Tensor(np.zeros((1, 1, 1, 1), np.float32))
        self.no_mask = ms.Tensor(np.ones((1, 1, 1, 1), np.bool_))
        # in training on CPU, the native kernels' core (see NativeAttentionCore), when they build
        from src.native.kernels import native_kernels_usable
        self.native_core = self.native_dropped_core = None
        if native_kernels_usable("attention_softmax"):
            self.native_core = NativeAttentionCore(self.scale)
            self.native_dropped_core = NativeAttentionCore(self.scale, 1.0 - dropout) if dropout > 0 else None
            self.no_keys = ms.Tensor(np.ones((1,), np.int32))
        # primitives (not ops.matmul) so tensor parallelism can shard them and no explicit transpose is needed
        self.score_matmul = ops.BatchMatMul(transpose_b=True)
        self.context_matmul = ops.BatchMatMul()

    def split_heads(self, x):
        b, n, _ = x.shape
        return ops.transpose(ops.reshape(x, (b, n, self.heads, self.head_dim)), (0, 2, 1, 3))

    def merge_heads(self, x):
        b, _, n, _ = x.shape
        return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (b, n, self.heads * self.head_dim))

    def attend(self, q, k, v, bias):
        """q (B,h,Lq,d), k/v (B,h,Lk,d) -> (B, Lq, width)."""
        if not self.lean_backward:
            scores = self.score_matmul(q, k) * self.scale
            scores = ops.cast(scores, ms.float32)
            if bias is not None:
                scores = scores + bias
            probs = ops.cast(ops.softmax(scores, -1), v.dtype)
            return self.out(self.merge_heads(self.context_matmul(self.dropout(probs), v)))
        dropping = self.dropout_p > 0 and self.dropout.training
        if self.native_core is not None and self.training:
            if not dropping:
                context = self.native_core(q, k, v, self.no_bias if bias is None else bias, self.no_keys,
                                           self.no_keys, self.no_keys)
                return self.out(self.merge_heads(context))
            if hasattr(self.dropout.dropout, "mask_keys"):    # the trainer's StepDropout: its mask as keys
                shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
                context = self.native_dropped_core(q, k, v, self.no_bias if bias is None else bias,
                                                   *self.dropout.dropout.mask_keys(shape))
                return self.out(self.merge_heads(context))
        if dropping:
            # the dropout layer's own kernel draws the mask; only the mask is used, so a kernel that can draw one
            # alone (the trainer's StepDropout) is asked for just that
            shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            kernel = self.dropout.dropout
            if hasattr(kernel, "draw_mask"):
                keep = kernel.draw_mask(shape)
            else:
                keep = ops.cast(kernel(ops.zeros(shape, ms.float32))[1], ms.bool_)
            if bias is None:
                context = self.unbiased_dropped_core(q, k, v, self.no_bias, keep)
            else:
                context = self.dropped_core(q, k, v, bias, keep)
        elif bias is None:
            context = self.unbiased_core(q, k, v, self.no_bias, self.no_mask)
        else:
            context = self.core(q, k, v, bias, self.no_mask)
        return self.out(self.merge_heads(context))

    def project_kv(self, memory):
        """Keys and values of `memory` (B, Lk, kv_width) as (B, h, Lk, d) each; cross-attention caches them once."""
        return self.split_heads(self.key(memory)), self.split_heads(self.value(memory))

    def construct(self, x, bias=None, memory=None):
        source = x if memory is None else memory
        k, v = self.project_kv(source)
        return self.attend(self.split_heads(self.query(x)), k, v, bias)

    def step(self, x, k_cache, v_cache, position_onehot, bias):
        """One decoding step of self-attention.

        x: (B, 1, width) the newest token; k_cache/v_cache: (B, h, max_len, d); position_onehot: (1, 1, max_len, 1)
        with a 1 at the current position; bias: (1, 1, 1, max_len) hiding positions after the current one.
        Returns the output (B, 1, width) and the updated caches (written at the current position only).
        """
        k_new, v_new = self.project_kv(x)
        keep = 1.0 - position_onehot
        k_cache = k_cache * keep + k_new * position_onehot
        v_cache = v_cache * keep + v_new * position_onehot
        return self.attend(self.split_heads(self.query(x)), k_cache, v_cache, bias), k_cache, v_cache

    def step_cross(self, x, k_mem, v_mem, bias):
        """Cross-attention for one step against precomputed memory keys/values."""
        return self.attend(self.split_heads(self.query(x)), k_mem, v_mem, bias)


class TanhGELU(nn.Cell):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). In training on CPU it is
    src/native/tanh_gelu.cc (forward and backward one pass each; the backward keeps only x); elsewhere, and when the
    kernel cannot be built, ElementwiseTanhGELU."""

    def __init__(self):
        super().__init__()
        from src.native.kernels import kernel_threads, native_kernels_usable, tanh_gelu_op
        self.elementwise = ElementwiseTanhGELU()
        self.native = None
        if native_kernels_usable("tanh_gelu"):
            self.native = tanh_gelu_op()
            self.fixed = ms.Tensor(np.array([kernel_threads()], np.float32))

    def construct(self, x):
        if self.native is not None and self.training:
            return self.native(x, self.fixed)
        return self.elementwise(x)


class ElementwiseTanhGELU(nn.Cell):
    """The tanh GELU computed as the identical x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) from elementwise kernels,
    with a hand-written backward that keeps only x. On CPU, MindSpore's GeLU and GeLUGrad kernels took a fifth of an
    encoder block's training step (183 and 203 ms on a 1500 x 3072 activation, against 42 ms for this forward); fp16
    inputs are computed in fp32."""

    def __init__(self):
        super().__init__()
        self.inner, self.cubic = 2.0 * math.sqrt(2.0 / math.pi), 0.044715

    def gate(self, x):
        """(sigmoid(u), du/dx) with u = inner * (x + cubic * x^3), in fp32."""
        x = ops.cast(x, ms.float32)
        square = x * x
        return ops.sigmoid(self.inner * x * (1.0 + self.cubic * square)), self.inner * (1.0 + 3.0 * self.cubic * square)

    def construct(self, x):
        gate, _ = self.gate(x)
        return ops.cast(ops.cast(x, ms.float32) * gate, x.dtype)

    def bprop(self, x, out, dout):
        gate, slope = self.gate(ops.depend(x, dout))
        wide = ops.cast(x, ms.float32)
        grad = ops.cast(dout, ms.float32) * (gate + wide * gate * (1.0 - gate) * slope)
        return (ops.cast(grad, x.dtype),)


class QuickGELU(nn.Cell):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP (and Chinese-CLIP's ViT) were trained with."""

    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = ("gelu", "gelu_exact", "quick_gelu", "relu")


def activation_cell(name):
    """The feed-forward nonlinearity `name`: gelu (tanh approximation, this project's default), gelu_exact (the erf
    form of BERT and ViT), quick_gelu (CLIP) or relu."""
    if name == "gelu":
        return TanhGELU()
    if name == "gelu_exact":
        return nn.GELU(approximate=False)
    if name == "quick_gelu":
        return QuickGELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; use one of {ACTIVATIONS}")


class FeedForward(nn.Cell):
    def __init__(self, width, ffn, dropout=0.0, init_range=0.02, activation="gelu"):
        super().__init__()
        self.fc1 = dense(width, ffn, init_range)
        self.act = activation_cell(activation)
        self.fc2 = dense(ffn, width, init_range)
        self.dropout = dropout_layer(dropout)

    def construct(self, x):
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class EncoderBlock(nn.Cell):
    """Pre-LN block: x + Attn(LN(x)), then + FFN(LN(x)). With `post_ln` (BERT's order): LN(x + Attn(x)), then
    LN(x + FFN(x)); ln1 / ln2 are then BERT's attention.output.LayerNorm / output.LayerNorm."""

    def __init__(self, width, heads, ffn, dropout=0.0, attention_dropout=0.0, eps=1e-5, init_range=0.02,
                 post_ln=False, activation="gelu"):
        super().__init__()
        self.post_ln = bool(post_ln)
        self.ln1 = layer_norm(width, eps)
        self.attn = Attention(width, heads, attention_dropout, init_range)
        self.ln2 = layer_norm(width, eps)
        self.ffn = FeedForward(width, ffn, dropout, init_range, activation)
        # one dropout layer per residual branch: StepDropout draws one mask per layer and step
        self.attn_dropout, self.ffn_dropout = (dropout_layer(dropout) for _ in range(2))

    def construct(self, x, bias=None):
        if self.post_ln:
            x = self.ln1(x + self.attn_dropout(self.attn(x, bias)))
            return self.ln2(x + self.ffn_dropout(self.ffn(x)))
        x = x + self.attn_dropout(self.attn(self.ln1(x), bias))
        return x + self.ffn_dropout(self.ffn(self.ln2(x)))


class EncoderStack(nn.Cell):
    """`layers` encoder blocks (0 allowed) with an optional final LayerNorm (`post_ln` blocks, `activation`: see
    EncoderBlock and activation_cell)."""

    def __init__(self, width, layers, heads, ffn, dropout=0.0, attention_dropout=0.0, eps=1e-5, init_range=0.02,
                 final_norm=True, post_ln=False, activation="gelu"):
        super().__init__()
        self.blocks = nn.CellList([EncoderBlock(width, heads, ffn, dropout, attention_dropout, eps, init_range,
                                                post_ln, activation)
                                   for _ in range(layers)])
        self.final_norm = layer_norm(width, eps) if (final_norm and layers > 0) else nn.Identity()

    def construct(self, x, mask=None):
        bias = None if mask is None else padding_bias(mask)
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)


class DecoderBlock(nn.Cell):
    """Pre-LN decoder block: causal self-attention, cross-attention to the memory, feed-forward."""

    def __init__(self, width, heads, ffn, dropout=0.0, attention_dropout=0.0, eps=1e-5, init_range=0.02,
                 activation="gelu"):
        super().__init__()
        self.ln1 = layer_norm(width, eps)
        self.self_attn = Attention(width, heads, attention_dropout, init_range)
        self.ln2 = layer_norm(width, eps)
        self.cross_attn = Attention(width, heads, attention_dropout, init_range)
        self.ln3 = layer_norm(width, eps)
        self.ffn = FeedForward(width, ffn, dropout, init_range, activation)
        self.self_attn_dropout, self.cross_attn_dropout, self.ffn_dropout = (dropout_layer(dropout) for _ in range(3))

    def construct(self, x, self_bias, memory, memory_bias):
        x = x + self.self_attn_dropout(self.self_attn(self.ln1(x), self_bias))
        x = x + self.cross_attn_dropout(self.cross_attn(self.ln2(x), memory_bias, memory))
        return x + self.ffn_dropout(self.ffn(self.ln3(x)))

    def step(self, x, k_cache, v_cache, k_mem, v_mem, position_onehot, self_bias, memory_bias):
        h, k_cache, v_cache = self.self_attn.step(self.ln1(x), k_cache, v_cache, position_onehot, self_bias)
        x = x + h
        x = x + self.cross_attn.step_cross(self.ln2(x), k_mem, v_mem, memory_bias)
        return x + self.ffn(self.ln3(x)), k_cache, v_cache
