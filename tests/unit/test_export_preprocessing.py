"""The export manifest's "preprocessing" block: enough to rebuild the graphs' inputs by hand (checked against the
repository's own transforms), and what the MindIR runner takes its input sizes from."""
import json
import os

import numpy as np
from PIL import Image

from src.config import load_config, save_config
from src.data.transforms import load_image
from src.inference.export_graphs import preprocessing
from src.inference.exported_model import ExportedModel
from tests.helpers import ROOT


class _Tokens:
    cls_id, sep_id, pad_id = 2, 3, 0


def caption_config(*overrides):
    return load_config(os.path.join(ROOT, "config", "caption", "tiny.yaml"), list(overrides))


def by_hand(path, block):
    """An image prepared from the block's words alone (PIL + numpy, none of the repository's code)."""
    image = Image.open(path).convert(block["color"])
    size = block["size"]
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))),
                         Image.BILINEAR)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
    return ((pixels - np.array(block["mean"], np.float32)) / np.array(block["std"], np.float32)).transpose(2, 0, 1)


def test_block_describes_the_image_transform(tmp_path):
    cfg = caption_config()
    block = preprocessing(cfg, _Tokens())
    assert block["image"]["size"] == cfg.model.image.image_size == 32
    assert block["text"]["max_len"] == 16 and block["text"]["cls_id"] == 2
    assert block["audio"]["mode"] == "mel" and block["audio"]["sample_rate"] == 16000
    json.dumps(block, allow_nan=False)
    y, x = np.mgrid[0:40, 0:64]   # a smooth picture: resampling kernels then differ in the last digits only
    picture = np.stack([128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 7.0), 2 * x + y], axis=-1)
    path = tmp_path / "x.png"
    Image.fromarray(picture.astype(np.uint8)).save(path)
    mine, theirs = by_hand(path, block["image"]), load_image(str(path), 32)
    assert mine.shape == theirs.shape == (3, 32, 32)
    assert np.abs(mine - theirs).mean() < 0.05
    assert np.abs(by_hand(path, {**block["image"], "mean": [0, 0, 0]}) - theirs).mean() > 0.5  # the check can fail


def test_runner_takes_its_sizes_from_the_block(tmp_path):
    cfg = caption_config()
    save_config(cfg, str(tmp_path), "m_config.yaml")
    (tmp_path / "m_vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    block = preprocessing(cfg.with_updates({"model.image.image_size": 48, "model.text.max_len": 20,
                                            "data.lower_case": False}), _Tokens())
    manifest = {"format_version": 1, "task": "caption", "file_format": "MINDIR", "graphs": {},
                "config": "m_config.yaml", "vocab": "m_vocab.txt", "preprocessing": block}
    (tmp_path / "m_export.json").write_text(json.dumps(manifest))
    exported = ExportedModel(str(tmp_path / "m"))
    assert exported.cfg.model.image.image_size == 48     # the block wins over the config file (32)
    assert exported.cfg.model.text.max_len == 20 and exported.cfg.data.lower_case is False


def pad_by_hand(path, block):
    """data.resize pad prepared from the block's words alone: longer side to size, centred on pad_color."""
    image = Image.open(path).convert(block["color"])
    size = block["size"]
    scale = size / max(image.size)
    width, height = round(image.size[0] * scale), round(image.size[1] * scale)
    canvas = Image.new("RGB", (size, size), tuple(block["pad_color"]))
    canvas.paste(image.resize((width, height), Image.BILINEAR), ((size - width) // 2, (size - height) // 2))
    pixels = np.asarray(canvas, np.float32)
    return ((pixels - np.array(block["mean"], np.float32)) / np.array(block["std"], np.float32)).transpose(2, 0, 1)


def test_block_carries_the_resize_rule_and_the_runner_and_pipeline_honour_it(tmp_path):
    from types import SimpleNamespace
    from src.inference.pipeline import _Loaded
    cfg = caption_config("data.resize=pad", "data.pad_color=[0,0,255]")
    block = preprocessing(cfg, _Tokens())["image"]
    assert (block["fit"], block["pad_color"], block["background"]) == ("pad", [0, 0, 255], [255, 255, 255])
    assert "longer side" in block["resize"]
    picture = np.zeros((50, 200, 3), np.uint8)
    picture[:, :20] = (255, 0, 0)
    picture[:, 20:] = (0, 255, 0)
    path = tmp_path / "wide.png"
    Image.fromarray(picture).save(path)
    mine = pad_by_hand(path, block)
    theirs = _Loaded.images(SimpleNamespace(cfg=cfg), [str(path)])[0]   # the inference API's image path
    assert np.abs(mine - theirs).mean() < 0.05
    np.testing.assert_allclose(theirs[:, 16, 1], mine[:, 16, 1], atol=1e-5)   # the red end survives
    save_config(caption_config(), str(tmp_path), "m_config.yaml")   # the config file says crop
    (tmp_path / "m_vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    manifest = {"format_version": 1, "task": "caption", "file_format": "MINDIR", "graphs": {},
                "config": "m_config.yaml", "vocab": "m_vocab.txt", "preprocessing": preprocessing(cfg, _Tokens())}
    (tmp_path / "m_export.json").write_text(json.dumps(manifest))
    exported = ExportedModel(str(tmp_path / "m"))
    assert exported.cfg.data.resize == "pad" and list(exported.cfg.data.pad_color) == [0, 0, 255]
    runner_image = _Loaded.images(SimpleNamespace(cfg=exported.cfg), [str(path)])[0]
    np.testing.assert_array_equal(runner_image, theirs)
