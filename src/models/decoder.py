"""Cross-modal decoder used for text generation and for image-token generation.

memory (B, S, H_cross) -> linear to the decoder width -> `memory_layers` encoder blocks (the released OPT has 6) ->
`layers` pre-LN decoder blocks with causal self-attention and cross-attention -> final LayerNorm -> logits through the
tied input embedding.

Original-math options (model.text_decoder / model.image_decoder; the released OPT decoders are `activation: relu`,
`positions: sinusoid`, `final_norm: false`, `memory_final_norm: false`, `output_bias: false`, `dropout: 0.2`):
- `activation`: feed-forward GELU (default) or ReLU;
- `positions`: `learned` adds a learned position table to the token embedding; `sinusoid` computes
  token_embedding x sqrt(hidden) + a fixed sine/cosine table of `sinusoid_length` rows (layers.sinusoid_table) and has
  no position parameter;
- `final_norm` / `memory_final_norm`: the LayerNorm before the output projection / after the memory encoder;
- `output_bias`: a learned bias on the logits;
- `dropout`: the decoder's hidden and attention dropout (null = model.dropout and model.attention_dropout).

Two ways to run it, which give the same logits:
- `construct(tokens, memory, memory_mask)`: the whole target sequence at once (training, scoring);
- `prepare(memory, memory_mask)` once, then `step(token, position, state)` per token with a static-size KV cache
  (generation; the cache has `max_len` slots and is updated in place of the current position, which keeps shapes
  static for graph mode and MindIR export).
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .encoders import positions
from .layers import (DecoderBlock, EncoderStack, TiedProjection, causal_bias, dense, dropout_layer, embedding,
                     grid_position_embedding, layer_norm, padding_bias, sinusoid_table)


class Decoder(nn.Cell):
    """`grid`: the targets are a grid x grid image-token raster; input position t (BOS, then token t-1) starts from the
    2-D sine-cosine code of the cell it predicts, t (models.layers.grid_position_embedding)."""

    def __init__(self, cfg, dec_cfg, vocab_size, memory_width, grid=None):
        super().__init__()
        c, init = dec_cfg, cfg.initializer_range
        self.vocab_size, self.max_len, self.width = vocab_size, c.max_len, c.hidden
        self.heads, self.head_dim, self.num_layers = c.heads, c.hidden // c.heads, c.layers
        drop = cfg.dropout if c.dropout is None else c.dropout
        attn_drop = cfg.attention_dropout if c.dropout is None else c.dropout
        if c.positions not in ("learned", "sinusoid"):
            raise ValueError(f"decoder positions must be 'learned' or 'sinusoid', got {c.positions!r}")
        self.memory_proj = dense(memory_width, c.hidden, init)
        self.memory_encoder = EncoderStack(c.hidden, c.memory_layers, c.heads, c.ffn, drop, attn_drop,
                                           cfg.layer_norm_eps, init, final_norm=c.memory_final_norm,
                                           activation=c.activation)
        self.token_embeddings = embedding(vocab_size, c.hidden, init)
        self.sinusoid = c.positions == "sinusoid"
        if self.sinusoid:
            if c.max_len > c.sinusoid_length:
                raise ValueError(f"decoder max_len {c.max_len} exceeds its sinusoid_length {c.sinusoid_length}")
            self.embed_scale = float(np.sqrt(c.hidden))
            self.position_table = ms.Tensor(sinusoid_table(c.sinusoid_length, c.hidden)[:c.max_len])
        else:
            self.position_embeddings = (grid_position_embedding(grid, c.hidden, leading=0, rows=c.max_len) if grid
                                        else embedding(c.max_len, c.hidden, init))
        self.dropout = dropout_layer(drop)
        self.blocks = nn.CellList([DecoderBlock(c.hidden, c.heads, c.ffn, drop, attn_drop, cfg.layer_norm_eps, init,
                                                c.activation) for _ in range(c.layers)])
        self.final_norm = layer_norm(c.hidden, cfg.layer_norm_eps) if c.final_norm else nn.Identity()
        self.project = TiedProjection()
        self.use_output_bias = c.output_bias
        if c.output_bias:
            self.output_bias = ms.Parameter(ms.Tensor(np.zeros(vocab_size, np.float32)), name="output_bias")
        self.causal = causal_bias(c.max_len)

    def encode_memory(self, memory, memory_mask):
        return self.memory_encoder(self.memory_proj(memory), memory_mask)

    def logits(self, h):
        """Tied output projection: hidden (B, T, D) -> logits (B, T, vocab)."""
        logits = self.project(self.final_norm(h), self.token_embeddings.embedding_table)
        return logits + self.output_bias if self.use_output_bias else logits

    def position_rows(self, index):
        """Position vectors of the int32 positions `index` (shape (1, T) or (T,))."""
        if self.sinusoid:
            return ops.gather(self.position_table, index, 0)
        return self.position_embeddings(index)

    def token_rows(self, tokens):
        x = self.token_embeddings(tokens)
        return x * self.embed_scale if self.sinusoid else x

    def embed(self, tokens):
        return self.dropout(self.token_rows(tokens) + self.position_rows(positions(tokens.shape[1])))

    def construct(self, tokens, memory, memory_mask):
        """tokens (B, T) decoder inputs (BOS first), T <= max_len -> logits (B, T, vocab)."""
        n = tokens.shape[1]
        mem = self.encode_memory(memory, memory_mask)
        mem_bias = padding_bias(memory_mask)
        self_bias = self.causal[:, :, :n, :n]
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h, self_bias, mem, mem_bias)
        return self.logits(h)

    def prepare(self, memory, memory_mask):
        """Per-layer cross-attention keys/values and empty self-attention caches for incremental decoding.

        Returns a flat tuple: (mem_bias, k_mem_0, v_mem_0, ..., k_cache_0, v_cache_0, ...). Shapes: mem_bias
        (B,1,1,S); k/v_mem (B,h,S,d); caches (B,h,max_len,d) of zeros.
        """
        mem = self.encode_memory(memory, memory_mask)
        batch = memory.shape[0]
        mem_kv = ()
        for block in self.blocks:
            mem_kv = mem_kv + block.cross_attn.project_kv(mem)
        empty = ops.zeros((batch, self.heads, self.max_len, self.head_dim), mem.dtype)
        caches = ()
        for _ in range(self.num_layers):
            caches = caches + (empty, empty)
        return (padding_bias(memory_mask),) + mem_kv + caches

    def step(self, token, position, state):
        """One incremental step. token (B, 1) int32; position: int32 tensor of shape (1,) (0-based index of `token`);
        state: the tuple from `prepare` or a previous step. Returns (logits (B, vocab), new_state)."""
        n = self.num_layers
        mem_bias, mem_kv, caches = state[0], state[1:1 + 2 * n], state[1 + 2 * n:]
        slots = ops.arange(0, self.max_len, dtype=ms.int32)
        onehot = ops.reshape(ops.cast(ops.equal(slots, position), ms.float32), (1, 1, self.max_len, 1))
        visible = ops.cast(ops.less_equal(slots, position), ms.float32)
        self_bias = ops.reshape((1.0 - visible) * -1e4, (1, 1, 1, self.max_len))
        h = self.dropout(self.token_rows(token) + ops.expand_dims(self.position_rows(position), 0))
        new_caches = ()
        for i, block in enumerate(self.blocks):
            h, k_cache, v_cache = block.step(h, caches[2 * i], caches[2 * i + 1], mem_kv[2 * i], mem_kv[2 * i + 1],
                                             onehot, self_bias, mem_bias)
            new_caches = new_caches + (k_cache, v_cache)
        logits = self.logits(h)[:, 0]
        return logits, (mem_bias,) + mem_kv + new_caches
