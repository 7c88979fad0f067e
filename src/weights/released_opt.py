"""Convert a released OPT checkpoint (Zidong Taichu pre-training net, or the model zoo's region-feature caption net)
into this project's parameter names, with a LoadReport of every key.

    python -m src.weights.convert --source zidongtaichu OPT_1-38_136.ckpt --config config/model/opt_1b_released.yaml \
        --out converted/opt_1b
    python -m src.weights.convert --source modelzoo opt_ascend_v190_cococaption_research_mm.ckpt \
        --config config/model/opt_modelzoo_caption.yaml --out converted/caption

The output is a checkpoint directory (`checkpoint.init` / `--set checkpoint.init=DIR` loads it strictly) plus
`load_report.json` / `.md`: every source key dropped, renamed, transposed, sliced, remapped, reshaped or cast (and
why), and every parameter of ours that the converter filled itself (identity chains, zero gains, biases and
positions) or left at the model's initialisation because the file has no counterpart. The key tables are data in
`released_opt_keys.py`; the reasons are in docs/released_checkpoints.md.

What it does beyond renaming (reference: opt_released_checkpoints.md):
- untying: the word table is stored as `cls.predictions.decoder.weight`, the image/audio input projections as
  `feat_regress.weight` / `audio_feat_regress.weight`;
- [in, out] -> [out, in] for the attention output and FFN weights of the Zidong Taichu ViT and cross-modal encoder;
- vocabularies: word table and MLM bias rows [:vocab] (28,996 -> 21,128); the 36,560-row text-decoder table rows
  [:vocab] with its PAD/BOS/EOS row 0 also copied to our BOS ([CLS] 101) and EOS ([SEP] 102); the 8,192-row
  image-decoder table shifted to our offset (ours[c + 3] = theirs[c + 1], BOS and EOS = theirs[0]);
- positions: text rows [:max_len] with the shared type row 0 folded in; the ViT's and the image embedding's trailing
  pad row moved first (our global token); decoder sinusoids need no table (positions: sinusoid);
- the shared type table split into our per-modality type vectors; identity chains for our extra projections and
  LayerNorms, so the net computes the original's function (exact up to LayerNorm eps);
- fp16 -> fp32; training state (Adam moments, loss-scale cell, accumulators) dropped;
- a checkpoint saved in model-parallel slices is merged with mindspore.transform_checkpoints given its strategy file
  (IN is then the folder holding rank_*/), or refused with a message naming what is needed.
"""
import os
import shutil
import tempfile

import numpy as np

from src.errors import UserError

from . import released_opt_keys as K
from .released_opt_keys import SOURCES  # noqa: F401  (re-exported for the CLI)
from .report import LoadReport


def read_source(path, strategy=None):
    """name -> numpy array of an original checkpoint: one .ckpt file, or with `strategy` a folder of per-rank slices
    (rank_0/*.ckpt, rank_1/*.ckpt, ...) merged by MindSpore's checkpoint transformation."""
    import mindspore as ms
    if os.path.isdir(path):
        if not strategy:
            raise UserError(f"{path} is a folder: a checkpoint saved in model-parallel slices (rank_*/*.ckpt) needs "
                            f"the strategy file it was trained with; pass --strategy STRATEGY.ckpt")
        if not os.path.isfile(strategy):
            raise UserError(f"strategy file {strategy} does not exist")
        work = tempfile.mkdtemp(prefix="opt_merge_")
        try:
            ms.transform_checkpoints(path, work, "merged", src_strategy_file=strategy, dst_strategy_file=None)
            merged = os.path.join(work, "rank_0", "merged0.ckpt")
            if not os.path.isfile(merged):
                raise UserError(f"merging the slices in {path} with {strategy} wrote no {merged}")
            return _read_file(merged)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if strategy:
        raise UserError(f"--strategy merges per-rank slices: pass the folder that holds rank_*/, not the file {path}")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    return _read_file(path)


def _read_file(path):
    from .checkpoint import read_mindspore_file
    try:
        params = read_mindspore_file(path)
    except UserError:
        raise
    except Exception as err:  # MindSpore raises ValueError / RuntimeError on corrupt files
        raise UserError(f"cannot read checkpoint {path}: {str(err).strip().splitlines()[0] if str(err) else err}") \
            from err
    return {name: p.asnumpy() for name, p in params.items()}


def detect_source(keys):
    """'zidongtaichu' (has the ViT), 'modelzoo' (region features), or None (not an original OPT file)."""
    keys = list(keys)
    if any(k.startswith("uniter.img_embeddings.vit.") for k in keys):
        return "zidongtaichu"
    if any(k.startswith("uniter.img_embeddings.pos_linear.") for k in keys):
        return "modelzoo"
    return None


class _Converter:
    def __init__(self, source_tensors, model, source, report):
        self.src, self.model, self.source, self.report = source_tensors, model, source, report
        self.cfg = model.cfg
        self.params = dict(model.parameters_and_names())
        self.out, self.used, self.notes = {}, set(), []

    # ----- helpers -----
    def take(self, key):
        if key not in self.src:
            raise UserError(f"the {self.source} checkpoint has no '{key}'; is it the file named in "
                            f"docs/released_checkpoints.md (--source {self.source})?")
        self.used.add(key)
        value = self.src[key]
        if value.dtype != np.float32 and np.issubdtype(value.dtype, np.floating):
            self.report.add("cast", key, None, f"{value.dtype} -> float32")
            value = value.astype(np.float32)
        return value

    def put(self, ours, value, action, source_key=None, detail=""):
        if ours not in self.params:
            raise UserError(f"the model of this config has no parameter '{ours}' for {source_key}; use a config "
                            f"with the released shapes (config/model/opt_1b_released.yaml or "
                            f"opt_modelzoo_caption.yaml)")
        wanted = tuple(self.params[ours].shape)
        value = np.asarray(value, np.float32)
        if value.shape != wanted:
            raise UserError(self._shape_problem(source_key or ours, value.shape, wanted, ours))
        self.out[ours] = value
        self.report.add(action, source_key, ours, detail)

    def _shape_problem(self, key, got, wanted, ours):
        sliced = (len(got) == len(wanted) and got != wanted
                  and all(w % g == 0 for g, w in zip(got, wanted) if g))
        if sliced:
            return (f"'{key}' has shape {got} where {ours} needs {wanted}: the checkpoint looks like one "
                    f"model-parallel slice; merge the per-rank files first: pass the folder holding rank_*/ and "
                    f"--strategy STRATEGY.ckpt (the strategy file of the training run)")
        return (f"'{key}' gives shape {got} but {ours} has shape {wanted}: the --config does not have this "
                f"checkpoint's shapes (use config/model/{K.SOURCE_CONFIGS[self.source]} for --source {self.source})")

    def fill(self, ours, value, detail):
        self.put(ours, np.broadcast_to(np.asarray(value, np.float32), tuple(self.params[ours].shape)).copy(),
                 "initialised", None, detail)

    def identity(self, prefix, detail):
        w = self.params[prefix + ".weight"]
        if w.shape[0] != w.shape[1]:
            raise UserError(f"{prefix} is {w.shape[1]} -> {w.shape[0]}; the identity chain needs equal widths")
        self.fill(prefix + ".weight", np.eye(w.shape[0], dtype=np.float32), "identity: " + detail)
        self.fill(prefix + ".bias", 0.0, "zero bias of the identity: " + detail)

    def unit_norm(self, prefix, detail):
        self.fill(prefix + ".gamma", 1.0, "gain 1: " + detail)
        self.fill(prefix + ".beta", 0.0, "bias 0: " + detail)

    def has(self, ours):
        return ours in self.params

    # ----- parts -----
    def stacks(self):
        for src_prefix, (our_prefix, table, in_out) in K.STACKS.items():
            transpose = in_out and self.source == "zidongtaichu"
            keys = sorted(k for k in self.src if k.startswith(src_prefix))
            if keys:
                self._check_layer_count(src_prefix, our_prefix, keys)
            for key in keys:
                layer, rest = key[len(src_prefix):].split(".", 1)
                for old, new in table:
                    if rest.startswith(old):
                        ours = f"{our_prefix}{layer}.{new}{rest[len(old):]}"
                        break
                else:
                    raise UserError(f"unknown block key '{key}' in the {self.source} checkpoint")
                value = self.take(key)
                if transpose and rest.endswith(K.IN_OUT_WEIGHTS):
                    self.put(ours, value.T, "transposed", key, "stored [in, out] by MindSpore 1.x's built-in "
                                                             "transformer; ours is [out, in]")
                else:
                    self.put(ours, value, "renamed", key)

    def _check_layer_count(self, src_prefix, our_prefix, keys):
        """One line naming the config key when the checkpoint's stack has another layer count than the config's."""
        theirs = {k[len(src_prefix):].split(".", 1)[0] for k in keys}
        depth = len(our_prefix.split(".")) - 1
        ours = {n.split(".")[depth] for n in self.params if n.startswith(our_prefix)}
        if len(theirs) != len(ours):
            key = K.STACK_LAYER_KEYS[our_prefix]
            raise UserError(f"{src_prefix}* has {len(theirs)} layer(s) in the checkpoint but {key} is {len(ours)} "
                            f"in the config; set {key} to {len(theirs)} (--set {key}={len(theirs)})")

    def direct(self, table):
        for key, ours in table.items():
            if key in self.src:
                self.put(ours, self.take(key), "renamed", key)

    def text_embeddings(self, word_key):
        c = self.cfg
        if c.text.layers:
            raise UserError("the released OPT has no text encoder blocks: set model.text.layers 0")
        if c.text.hidden != c.cross.hidden:
            raise UserError("the released OPT embeds text at the cross-modal width: set model.text.hidden = "
                            "model.cross.hidden")
        vocab, length = c.text.vocab_size, c.text.max_len
        word = self.take(word_key)
        self.put("text_encoder.word_embeddings.embedding_table", word[:vocab], "sliced", word_key,
                 f"rows [:{vocab}] of {word.shape[0]} (only BERT-Chinese ids occur)"
                 + ("; untied from the MLM head name" if word_key.startswith("cls.") else ""))
        types = self.take("uniter.embeddings.token_type_embeddings.embedding_table")
        pos_key = "uniter.embeddings.position_embeddings.embedding_table"
        pos = self.take(pos_key)
        self.put("text_encoder.position_embeddings.embedding_table", pos[:length] + types[K.TYPE_TEXT], "sliced",
                 pos_key, f"rows [:{length}] of {pos.shape[0]}, plus the shared type row 0 (the original adds it "
                          "before its LayerNorm)")
        width = types.shape[1]
        self.report.add("remapped", "uniter.embeddings.token_type_embeddings.embedding_table",
                        "image_embed.type_embedding, audio_embed.type_embedding",
                        "shared type table split: row 0 text (folded into the positions), 1 image, 2 audio")
        self.put("image_embed.type_embedding", types[K.TYPE_IMAGE].reshape(1, 1, width), "reshaped", None,
                 "type row 1 as (1, 1, H)")
        self.put("audio_embed.type_embedding", types[K.TYPE_AUDIO].reshape(1, 1, width), "reshaped", None,
                 "type row 2 as (1, 1, H)")
        chain = "text path LN_orig(word + pos + type0) (exact up to LayerNorm eps)"
        self.unit_norm("text_encoder.layer_norm", chain)
        self.identity("text_embed.proj", chain)
        self.unit_norm("text_embed.proj_norm", chain)
        self.fill("text_embed.position_embeddings.embedding_table", 0.0, "zero: " + chain)
        self.fill("text_embed.type_embedding", 0.0, "zero: " + chain)

    def audio_embeddings(self):
        c = self.cfg
        if c.audio.mode != "features" or c.audio.layers:
            raise UserError("the released OPT takes audio as pre-extracted frame features with no encoder blocks: "
                            "set model.audio.mode features and model.audio.layers 0")
        if c.audio.hidden != c.cross.hidden:
            raise UserError("the released OPT projects audio straight to the cross-modal width: set model.audio.hidden "
                            "= model.cross.hidden")
        if self.source == "zidongtaichu":
            weight = self.take("audio_feat_regress.weight")
            self.put("audio_encoder.input_proj.weight", weight, "renamed", "audio_feat_regress.weight",
                     "audio_linear.weight, tied with the MAFR head and stored under its name (untied)")
        key = "uniter.audio_embeddings.position_embeddings.embedding_table"
        pos = self.take(key)
        rows = c.audio.max_frames
        self.put("audio_embed.position_embeddings.embedding_table", pos[:rows], "sliced", key,
                 f"rows [:{rows}] of {pos.shape[0]}")
        chain = "audio path LN(audio_LN(audio_linear(x)) + pos + type2) (exact up to LayerNorm eps)"
        self.fill("audio_encoder.position_embeddings.embedding_table", 0.0, "zero: " + chain)
        self.unit_norm("audio_encoder.layer_norm", chain)
        self.identity("audio_embed.proj", chain)

    def vit_image(self):
        c = self.cfg
        if c.image.mode != "pixels" or c.image.stem != "linear":
            raise UserError("the Zidong Taichu checkpoint has a ViT with a linear patch embedding: set "
                            "model.image.mode pixels and model.image.stem linear")
        bias_key = "uniter.img_embeddings.vit.stem.patch_to_embedding.dense.bias"
        bias = self.take(bias_key)
        self.put("image_encoder.patch_embed.bias", bias, "renamed", bias_key)
        self.put("image_encoder.global_token", bias.reshape(1, 1, -1), "reshaped", bias_key,
                 "the original's all-zero pad patch enters the ViT as the patch bias; it is our global token")
        key = "uniter.img_embeddings.vit.encoder_pos_embedding"
        vit_pos = self.take(key)[0]
        n = vit_pos.shape[0]
        self.put("image_encoder.position_embeddings.embedding_table",
                 np.concatenate([vit_pos[n - 1:], vit_pos[:n - 1]]), "remapped", key,
                 f"(1, {n}, W) squeezed; the pad row {n - 1} moved first (our global token)")
        key = "uniter.img_embeddings.position_embeddings.embedding_table"
        pos = self.take(key)
        self.put("image_embed.position_embeddings.embedding_table", np.concatenate([pos[n - 1:n], pos[:n - 1]]),
                 "remapped", key, f"rows [:{n}] of {pos.shape[0]}, the pad row {n - 1} moved first")
        weight = self.take("feat_regress.weight")
        self.put("image_embed.proj.weight", weight, "renamed", "feat_regress.weight",
                 "img_linear.weight, tied with the MRFR head and stored under its name (untied)")
        self.put("image_regression_head.out.weight", weight.T, "transposed", "feat_regress.weight",
                 "the MRFR head multiplies by img_linear.weight untransposed")
        if c.image.fuse_global_token:
            self.notes.append("model.image.fuse_global_token is true: the cross-modal encoder also sees the pad "
                              "patch, which the original keeps out")

    def region_image(self):
        c = self.cfg
        if c.image.mode != "features" or c.image.region_embedding != "two_norms" or c.image.layers:
            raise UserError("the model-zoo checkpoint embeds region features as LN(Dense(f)) + LN(Dense(box)): set "
                            "model.image.mode features, model.image.region_embedding two_norms, model.image.layers 0")
        why = "the model-zoo region embedding has no position table"
        self.fill("image_encoder.position_embeddings.embedding_table", 0.0, "zero: " + why)
        self.fill("image_embed.position_embeddings.embedding_table", 0.0, "zero: " + why)
        if c.image.fuse_global_token:
            self.notes.append("model.image.fuse_global_token is true: the original has no image global token")

    def heads(self):
        if self.source == "zidongtaichu":
            key = "cls.predictions.decoder.bias"
            bias = self.take(key)
            vocab = self.cfg.text.vocab_size
            self.put("mlm_head.bias", bias[:vocab], "sliced", key, f"rows [:{vocab}] of {bias.shape[0]}")
            w, b = self.src["itm_output.weight"], self.src["itm_output.bias"]
            self.put("pair_head.dense.weight", np.stack([w[1], w[2]]).astype(np.float32), "remapped",
                     "itm_output.weight", "pair head: row 1 (matched) <- ITM row 2 (text-image match, what the "
                                          "original's retrieval used), row 0 <- ITM row 1 (image swapped)")
            self.put("pair_head.dense.bias", np.stack([b[1], b[2]]).astype(np.float32), "remapped",
                     "itm_output.bias", "as pair_head.dense.weight")
            if self.cfg.heads.mlm_activation != "relu":
                self.notes.append("model.heads.mlm_activation is not relu: the MLM transform was trained with ReLU")
        for head in ("itm_head", "pair_head"):
            self.fill(f"{head}.gain", 0.0, "the towers' agreement term starts off (there are no towers)")
            self.fill(f"{head}.centre_sum", 0.0, "running centre starts empty")
            self.fill(f"{head}.centre_weight", 0.0, "running centre starts empty")

    def decoders(self):
        vocab = self.cfg.text.vocab_size
        key = "txt_output.tfm_embedding_lookup.embedding_table"
        table = self.take(key)
        ours = table[:vocab].copy()
        ours[[K.TEXT_BOS_ID, K.TEXT_EOS_ID]] = table[0]
        self.put("text_decoder.token_embeddings.embedding_table", ours, "remapped", key,
                 f"rows [:{vocab}] of {table.shape[0]}; the single PAD/BOS/EOS row 0 also at BOS [CLS] "
                 f"{K.TEXT_BOS_ID} and EOS [SEP] {K.TEXT_EOS_ID} (generation never emits PAD or BOS)")
        key = "img_output.tfm_embedding_lookup.embedding_table"
        if key in self.src:
            from src.data.masking import IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_TOKEN_OFFSET
            table = self.take(key)
            ours = self.params["image_decoder.token_embeddings.embedding_table"].asnumpy().copy()
            n = min(table.shape[0] - 1, ours.shape[0] - IMAGE_TOKEN_OFFSET)
            ours[IMAGE_TOKEN_OFFSET:IMAGE_TOKEN_OFFSET + n] = table[1:1 + n]
            ours[[IMAGE_BOS_ID, IMAGE_EOS_ID]] = table[0]
            self.put("image_decoder.token_embeddings.embedding_table", ours, "remapped", key,
                     f"ours[code + {IMAGE_TOKEN_OFFSET}] = theirs[code + 1] for codes 0..{n - 1}; BOS and EOS = "
                     f"their row 0; PAD row 0 and codes >= {n} keep the model's initialisation (no counterpart)")
        for dec, src_prefix in (("text_decoder", "txt_output."), ("image_decoder", "img_output.")):
            if not any(k.startswith(src_prefix) for k in self.src):
                continue
            c = self.cfg[dec]
            if self.has(f"{dec}.position_embeddings.embedding_table"):
                from src.models.layers import sinusoid_table
                self.fill(f"{dec}.position_embeddings.embedding_table", sinusoid_table(c.max_len, c.hidden),
                          "the original's sinusoids as learned rows (positions: learned does not scale the token "
                          "embedding by sqrt(hidden), so this is a warm start only)")
            for name in (f"{dec}.final_norm", f"{dec}.memory_encoder.final_norm"):
                if self.has(name + ".gamma"):
                    self.unit_norm(name, "no counterpart (the original has no final LayerNorm; a warm start only)")
            if self.has(f"{dec}.output_bias"):
                self.fill(f"{dec}.output_bias", 0.0, "no counterpart (the original has no output bias)")
            if c.activation != "relu" or c.positions != "sinusoid":
                self.notes.append(f"model.{dec} is not the original's math (activation relu, positions sinusoid, no "
                                  f"final LayerNorms or output bias): its converted weights are a warm start only")
        if self.has("cross_encoder.final_norm.gamma"):
            self.unit_norm("cross_encoder.final_norm", "no counterpart (the original's encoder has no final LN)")

    def dropped(self):
        for key in sorted(self.src):
            if key in self.used:
                continue
            if key.startswith(K.TRAINING_STATE):
                self.report.add("dropped", key, None, "training state of the original's training cell")
                continue
            reason = next((r for prefix, r in K.DROPPED.items() if key.startswith(prefix)), None)
            if reason is None:
                raise UserError(f"'{key}' is not a key of the {self.source} checkpoint this converter knows; is "
                                f"--source right?")
            self.used.add(key)
            self.report.add("dropped", key, None, reason)

    def fresh(self):
        for name, param in self.params.items():
            if name in self.out:
                continue
            reason = next((r for prefix, r in K.FRESH.items() if name.startswith(prefix)), None)
            if reason is None:
                reason = f"no counterpart in the {self.source} checkpoint"
            self.out[name] = param.asnumpy().astype(np.float32)
            self.report.add("initialised", None, name, reason + "; the model's initialisation")

    def run(self):
        if self.source == "zidongtaichu":
            self.text_embeddings("cls.predictions.decoder.weight")
            self.vit_image()
            self.direct(K.DIRECT_ZIDONGTAICHU)
        else:
            self.text_embeddings("uniter.embeddings.word_embeddings.embedding_table")
            self.region_image()
            self.direct(K.DIRECT_MODELZOO)
        self.direct(K.DIRECT)
        self.audio_embeddings()
        self.stacks()
        self.heads()
        self.decoders()
        self.dropped()
        self.fresh()
        return self.out


def convert(source_tensors, model, source):
    """(tensors: our name -> float32 array, LoadReport, notes) for an OPTModel `model` built from the target
    config."""
    if source not in K.SOURCES:
        raise UserError(f"--source must be one of {', '.join(K.SOURCES)}, got {source!r}")
    found = detect_source(source_tensors)
    if found is None:
        raise UserError("the checkpoint has no original OPT image embedding keys ('uniter.img_embeddings.vit.*' or "
                        "'uniter.img_embeddings.pos_linear.*'); it is not a released OPT checkpoint")
    if found != source:
        raise UserError(f"the checkpoint is a {found} checkpoint, not {source}: pass --source {found}")
    report = LoadReport(source)
    conv = _Converter(source_tensors, model, source, report)
    return conv.run(), report, conv.notes


def convert_file(in_path, config_path, source, out_dir, strategy=None, overrides=()):
    """Read, convert and write `out_dir` (a checkpoint directory + load_report.json/.md + model config.yaml).
    Returns (report, notes)."""
    from src.config import load_config, save_config
    from src.models.opt import build_model
    from .checkpoint import save_checkpoint

    cfg = load_config(config_path, list(overrides))
    tensors = read_source(in_path, strategy)
    model = build_model(cfg.model)
    out, report, notes = convert(tensors, model, source)
    del tensors
    save_checkpoint(out_dir, out, meta={"converted_from": os.path.abspath(in_path) if not os.path.isdir(in_path)
                                        else in_path, "source": source, "config": config_path, "notes": notes})
    report.write(out_dir)
    save_config(cfg, out_dir, name="model_config.yaml")
    return report, notes
