"""BERT-layout text weights (HuggingFace BertModel / BertForMaskedLM / BertForPreTraining safetensors:
bert-base-chinese, hfl/chinese-roberta-wwm-ext and kin, and the text tower of Chinese-CLIP) into OPT's text encoder.

Published key names (HuggingFace `modeling_bert.py`; torch Linear weights are [out, in], as MindSpore Dense):

    {p}embeddings.word_embeddings.weight      [V, D]    -> text_encoder.word_embeddings.embedding_table
    {p}embeddings.position_embeddings.weight  [512, D]  -> text_encoder.position_embeddings (first max_len rows)
    {p}embeddings.token_type_embeddings.weight [2, D]   -> text_encoder.token_type_embeddings (row 0 is used)
    {p}embeddings.LayerNorm.weight/bias (or legacy gamma/beta)        -> text_encoder.layer_norm
    {p}encoder.layer.N.attention.self.query/key/value.weight/bias     -> text_encoder.encoder.blocks.N.attn.*
    {p}encoder.layer.N.attention.output.dense                         -> ...blocks.N.attn.out
    {p}encoder.layer.N.attention.output.LayerNorm                     -> ...blocks.N.ln1   (post-LN)
    {p}encoder.layer.N.intermediate.dense                             -> ...blocks.N.ffn.fc1
    {p}encoder.layer.N.output.dense                                   -> ...blocks.N.ffn.fc2
    {p}encoder.layer.N.output.LayerNorm                               -> ...blocks.N.ln2   (post-LN)

Dropped with their reason: `{p}pooler.dense` (OPT's text tower has no pooler), `cls.*` (BERT's masked-LM and
next-sentence heads), `{p}embeddings.position_ids` / `token_type_ids` (index buffers of old exports).
The math this needs (model.text): post_ln true, type_vocab_size 2, activation gelu_exact, layer_norm_eps 1e-12.
"""
import re

from src.errors import UserError
from src.weights.foreign import layer_count

BERT_EPS = 1e-12
OURS = "text_encoder."


def bert_prefix(keys):
    """'bert.' (BertFor* models), '' (a bare BertModel) or None when no BERT word embeddings are in `keys`."""
    for prefix in ("bert.", ""):
        if prefix + "embeddings.word_embeddings.weight" in keys:
            return prefix
    return None


def check_text_config(imp, text_cfg, model_eps, what):
    """The config must give the text stack BERT's math; one line naming the key and the value to set."""
    eps = model_eps if text_cfg.layer_norm_eps is None else float(text_cfg.layer_norm_eps)
    wanted = (("model.text.post_ln", text_cfg.post_ln, True, "BERT adds, then normalises (post-LN)"),
              ("model.text.activation", text_cfg.activation, "gelu_exact", "BERT's GELU is the exact erf form"),
              ("model.text.layer_norm_eps", eps, BERT_EPS, "BERT's LayerNorm eps"))
    for key, have, need, why in wanted:
        if have != need:
            raise UserError(f"{imp.path}: {what} needs {key}: {need} ({why}), the config has {have}; set it "
                            f"(config/model/base_bert_vit.yaml does)")


def layer_norm_keys(imp, base):
    """(weight, bias) key names of a LayerNorm stored as weight/bias or as the legacy gamma/beta."""
    if imp.has(base + ".gamma"):
        return base + ".gamma", base + ".beta"
    return base + ".weight", base + ".bias"


def map_layer_norm(imp, base, ours):
    weight, bias = layer_norm_keys(imp, base)
    legacy = "legacy gamma/beta names" if weight.endswith("gamma") else ""
    imp.take(weight, ours + ".gamma", detail=legacy)
    imp.take(bias, ours + ".beta", detail=legacy)


def map_dense(imp, base, ours):
    imp.take(base + ".weight", ours + ".weight")
    imp.take(base + ".bias", ours + ".bias")


def map_bert(imp, prefix, model_cfg, what="BERT text weights", config_section=None):
    """Map the BERT text stack under `prefix` into text_encoder, after checking the file against model.text."""
    c = model_cfg.text
    check_text_config(imp, c, model_cfg.layer_norm_eps, what)
    e = prefix + "embeddings."
    words = imp.get(e + "word_embeddings.weight")
    imp.check(words.shape[1], c.hidden, "the text width (word_embeddings columns)",
              "set model.text.hidden to the file's width")
    imp.check(words.shape[0], c.vocab_size, "the text vocabulary size (word_embeddings rows)",
              "use the vocab.txt these weights were trained with as data.vocab (and model.text.vocab_size: 0)")
    layers = layer_count(imp.tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    imp.check(layers, c.layers, "the number of text layers", "set model.text.layers to the file's count")
    imp.check_heads(c.heads, "model.text.heads", config_section)
    ffn = imp.get(prefix + "encoder.layer.0.intermediate.dense.weight").shape[0] if layers else c.ffn
    imp.check(ffn, c.ffn, "the text feed-forward width", "set model.text.ffn to the file's width")
    types = imp.get(e + "token_type_embeddings.weight")
    imp.check(types.shape[0], c.type_vocab_size, "the token-type table size",
              "set model.text.type_vocab_size to the file's row count")
    positions = imp.get(e + "position_embeddings.weight")
    if positions.shape[0] < c.max_len:
        imp.check(positions.shape[0], c.max_len, "the number of text positions", "lower model.text.max_len")

    imp.take(e + "word_embeddings.weight", OURS + "word_embeddings.embedding_table")
    if positions.shape[0] == c.max_len:
        imp.take(e + "position_embeddings.weight", OURS + "position_embeddings.embedding_table")
    else:
        imp.take(e + "position_embeddings.weight", OURS + "position_embeddings.embedding_table",
                 positions[:c.max_len], "sliced", f"rows 0..{c.max_len - 1} of {positions.shape[0]} "
                                                  f"(model.text.max_len)")
    imp.take(e + "token_type_embeddings.weight", OURS + "token_type_embeddings.embedding_table",
             detail="every token uses type 0 (segment A)")
    map_layer_norm(imp, e + "LayerNorm", OURS + "layer_norm")
    for n in range(layers):
        src, dst = f"{prefix}encoder.layer.{n}.", f"{OURS}encoder.blocks.{n}."
        for part in ("query", "key", "value"):
            map_dense(imp, src + "attention.self." + part, dst + "attn." + part)
        map_dense(imp, src + "attention.output.dense", dst + "attn.out")
        map_layer_norm(imp, src + "attention.output.LayerNorm", dst + "ln1")
        map_dense(imp, src + "intermediate.dense", dst + "ffn.fc1")
        map_dense(imp, src + "output.dense", dst + "ffn.fc2")
        map_layer_norm(imp, src + "output.LayerNorm", dst + "ln2")
    for buffer in ("position_ids", "token_type_ids"):
        imp.drop(e + buffer, "an index buffer of older exports, not a weight")
    imp.drop_matching(re.escape(prefix) + r"pooler\.", "BERT's pooler (tanh(Dense([CLS]))): OPT's text tower has "
                                                      "no pooler; the cross-modal encoder has its own")


def map_bert_file(imp, model_cfg):
    """A whole BERT-layout file: the text stack plus BERT's pre-training heads, which are dropped."""
    prefix = bert_prefix(imp.tensors)
    if prefix is None:
        raise UserError(f"{imp.path}: no 'bert.embeddings.word_embeddings.weight' (or "
                        f"'embeddings.word_embeddings.weight'): not a BERT-layout checkpoint; checkpoint.init_text "
                        f"takes bert-base-chinese, chinese-roberta-wwm-ext and other BertModel files")
    map_bert(imp, prefix, model_cfg)
    imp.drop_matching(r"cls\.", "BERT's pre-training heads (masked-LM transform and decoder, next-sentence): OPT's "
                               "masked-LM head reads the cross-modal encoder, not the text tower")
