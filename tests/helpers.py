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
    return {
        "text_ids": ids, "text_mask": text_mask,
        "images": rng.standard_normal((batch, i.channels, i.image_size, i.image_size)).astype(np.float32),
        "feats": rng.standard_normal((batch, i.max_regions, i.feature_dim)).astype(np.float32),
        "boxes": rng.random((batch, i.max_regions, i.box_dim)).astype(np.float32),
        "audio": audio, "frame_mask": frame_mask,
    }
