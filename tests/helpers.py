"""Helpers shared by tests (import as `from tests.helpers import ...`)."""
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(name="tiny", overrides=()):
    from src.config import load_config
    return load_config(os.path.join(ROOT, "config", "model", f"{name}.yaml"), list(overrides))


def model_inputs(model_cfg, batch=2, seed=0, text_len=None, audio_frames=None):
    """Random model inputs; the last `max_len - text_len` text positions and trailing audio frames are padding."""
    rng = np.random.default_rng(seed)
    t, i, a = model_cfg.text, model_cfg.image, model_cfg.audio
    text_len = t.max_len if text_len is None else text_len
    ids = rng.integers(5, t.vocab_size, (batch, t.max_len)).astype(np.int32)
    text_mask = np.zeros((batch, t.max_len), np.int32)
    text_mask[:, :text_len] = 1
    ids[text_mask == 0] = 0
    frames = a.max_frames if audio_frames is None else audio_frames
    audio_dim = a.n_mels if a.mode == "mel" else a.feature_dim
    audio = rng.standard_normal((batch, a.max_frames, audio_dim)).astype(np.float32)
    frame_mask = np.zeros((batch, a.max_frames), np.int32)
    frame_mask[:, :frames] = 1
    feats = rng.standard_normal((batch, i.max_regions, i.feature_dim)).astype(np.float32)
    boxes = rng.random((batch, i.max_regions, i.box_dim)).astype(np.float32)
    if i.mode == "features":  # the packed column the pipelines feed (src.data.regions); the last region is padding
        from src.data.regions import pack_regions
        images = np.stack([pack_regions(f[:-1], b[:-1], i.max_regions) for f, b in zip(feats, boxes)])
    else:
        images = rng.standard_normal((batch, i.channels, i.image_size, i.image_size)).astype(np.float32)
    return {
        "text_ids": ids, "text_mask": text_mask, "images": images, "feats": feats, "boxes": boxes,
        "audio": audio, "frame_mask": frame_mask,
    }


def image_token_count(model_cfg):
    """Patches (pixels mode) or regions (features mode) per image."""
    i = model_cfg.image
    return i.max_regions if i.mode == "features" else (i.image_size // i.patch_size) ** 2


def task_batch(task, model_cfg, pretrain_cfg, batch=4, seed=0, has_audio=True):
    """A random but well-formed batch for a pre-training task (same columns as src.data.pretrain_data produces)."""
    rng = np.random.default_rng(seed)
    x = model_inputs(model_cfg, batch=batch, seed=seed, text_len=model_cfg.text.max_len - 3,
                     audio_frames=model_cfg.audio.max_frames - 5)
    n_patches = image_token_count(model_cfg)
    n_audio = model_cfg.audio.max_frames // (model_cfg.audio.subsample if model_cfg.audio.mode == "mel" else 1)
    p, ld = pretrain_cfg.max_predictions, model_cfg.text_decoder.max_len
    cols = {"text_ids": x["text_ids"], "text_mask": x["text_mask"], "image": x["images"]}
    if has_audio:
        cols.update(audio=x["audio"], frame_mask=x["frame_mask"])
    masked = lambda n, prob: (rng.random((batch, n)) < prob).astype(np.float32)  # noqa: E731
    if task == "mlm":
        cols["mlm_positions"] = np.sort(rng.choice(np.arange(1, 8), (batch, p)), 1).astype(np.int32)
        cols["mlm_labels"] = rng.integers(5, model_cfg.text.vocab_size, (batch, p)).astype(np.int32)
        cols["mlm_weights"] = np.ones((batch, p), np.float32)
    if task in ("mvm", "td", "id"):
        cols["image_masked"] = masked(n_patches, 0.3) if task != "id" else np.ones((batch, n_patches), np.float32)
    if task in ("mam", "td") and has_audio:
        cols["audio_masked"] = masked(n_audio, 0.3)
    if task == "itm":
        cols["itm_labels"] = rng.integers(0, 5, batch).astype(np.int32)
        cols["itm_image_src"] = np.arange(batch, dtype=np.int32)  # each text's own image and audio
        if has_audio:
            cols["itm_audio_src"] = np.arange(batch, dtype=np.int32)
    if task == "td":
        cols["dec_input"] = rng.integers(1, model_cfg.text.vocab_size, (batch, ld)).astype(np.int32)
        cols["dec_target"] = rng.integers(1, model_cfg.text.vocab_size, (batch, ld)).astype(np.int32)
        cols["dec_weights"] = np.ones((batch, ld), np.float32)
    if task == "id":
        li, vocab = model_cfg.image_decoder.max_len, model_cfg.image_decoder.codebook_size + 3
        cols["img_dec_input"] = rng.integers(1, vocab, (batch, li)).astype(np.int32)
        cols["img_dec_target"] = rng.integers(1, vocab, (batch, li)).astype(np.int32)
        cols["img_dec_weights"] = np.ones((batch, li), np.float32)
    return cols


def half_audio_manifest(manifest, out):
    """Copy of the JSONL `manifest` in which every second sample (1, 3, 5, ...) loses its audio: a data set
    where only some samples have audio. Returns the ids of the samples that keep their audio."""
    import json

    kept, lines = [], []
    with open(manifest, encoding="utf-8") as f:
        for n, line in enumerate(x for x in f if x.strip()):
            sample = json.loads(line)
            if n % 2:
                sample.pop("audio", None)
            elif "audio" in sample:
                kept.append(sample["id"])
            lines.append(json.dumps(sample, ensure_ascii=False))
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return kept


def block_gradients(lean, x, mask, width=16, training=False, native_attention=True):
    """Loss and parameter gradients of mean(block(x)^2) for a seeded EncoderBlock(width, 2 heads, 2 * width): `lean`
    False runs every cell with a hand-written backward through the primitives it replaces; `native_attention` False
    drops the attention's native core (src/native/attention_softmax.cc, used in training on CPU)."""
    import mindspore as ms
    from mindspore import nn

    from src.models.layers import EncoderBlock, padding_bias
    ms.set_seed(0)
    block = EncoderBlock(width, 2, 2 * width)
    switched = 0
    for _, cell in block.cells_and_names():
        if hasattr(cell, "lean_backward"):
            cell.lean_backward = lean
            switched += 1
    assert switched == 1 + 4 + 2 + 2   # the attention and its four Dense layers, the feed-forward's two, 2 LayerNorms
    if not native_attention:
        block.attn.native_core = None

    class Loss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.block = block

        def construct(self, x, mask):
            y = self.block(x, padding_bias(mask))
            return (y * y).mean()

    loss_net = Loss()
    loss_net.set_train(training)
    loss, grads = ms.value_and_grad(loss_net, None, loss_net.trainable_params())(x, mask)
    return loss.asnumpy(), [g.asnumpy() for g in grads]
