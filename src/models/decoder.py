"""Cross-modal decoder used for text generation and for image-token generation.

memory (B, S, H_cross) -> linear to the decoder width -> `memory_layers` encoder blocks (the released OPT has 6) ->
`layers` pre-LN decoder blocks with causal self-attention and cross-attention -> final LayerNorm -> logits through the
tied input embedding.

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
from .layers import (DecoderBlock, EncoderStack, TiedProjection, causal_bias, dense, embedding,
                     grid_position_embedding, layer_norm, padding_bias)


class Decoder(nn.Cell):
    """`grid`: the targets are a grid x grid image-token raster; input position t (BOS, then token t-1) starts from the
    2-D sine-cosine code of the cell it predicts, t (models.layers.grid_position_embedding)."""

    def __init__(self, cfg, dec_cfg, vocab_size, memory_width, grid=None):
        super().__init__()
        c, init = dec_cfg, cfg.initializer_range
        self.vocab_size, self.max_len, self.width = vocab_size, c.max_len, c.hidden
        self.heads, self.head_dim, self.num_layers = c.heads, c.hidden // c.heads, c.layers
        self.memory_proj = dense(memory_width, c.hidden, init)
        self.memory_encoder = EncoderStack(c.hidden, c.memory_layers, c.heads, c.ffn, cfg.dropout,
                                           cfg.attention_dropout, cfg.layer_norm_eps, init)
        self.token_embeddings = embedding(vocab_size, c.hidden, init)
        self.position_embeddings = (grid_position_embedding(grid, c.hidden, leading=0, rows=c.max_len) if grid else
                                    embedding(c.max_len, c.hidden, init))
        self.dropout = nn.Dropout(p=cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.CellList([DecoderBlock(c.hidden, c.heads, c.ffn, cfg.dropout, cfg.attention_dropout,
                                                cfg.layer_norm_eps, init) for _ in range(c.layers)])
        self.final_norm = layer_norm(c.hidden, cfg.layer_norm_eps)
        self.project = TiedProjection()
        self.output_bias = ms.Parameter(ms.Tensor(np.zeros(vocab_size, np.float32)), name="output_bias")
        self.causal = causal_bias(c.max_len)

    def encode_memory(self, memory, memory_mask):
        return self.memory_encoder(self.memory_proj(memory), memory_mask)

    def logits(self, h):
        """Tied output projection: hidden (B, T, D) -> logits (B, T, vocab)."""
        return self.project(self.final_norm(h), self.token_embeddings.embedding_table) + self.output_bias

    def embed(self, tokens):
        return self.dropout(self.token_embeddings(tokens) + self.position_embeddings(positions(tokens.shape[1])))

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
        h = self.dropout(self.token_embeddings(token) + ops.expand_dims(self.position_embeddings(position), 0))
        new_caches = ()
        for i, block in enumerate(self.blocks):
            h, k_cache, v_cache = block.step(h, caches[2 * i], caches[2 * i + 1], mem_kv[2 * i], mem_kv[2 * i + 1],
                                             onehot, self_bias, mem_bias)
            new_caches = new_caches + (k_cache, v_cache)
        logits = self.logits(h)[:, 0]
        return logits, (mem_bias,) + mem_kv + new_caches
