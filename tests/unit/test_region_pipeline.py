"""Region features end to end: manifests with per-image .npz files (7-d boxes, or the original's pixel pred_boxes
with width/height), validation and the MindRecord `regions` column, every pretraining task's and the fine-tune and
evaluation pipelines in model.image.mode features, and a task step on their batches."""
import json

import numpy as np
import pytest
from mindspore import Tensor

from src.data.build_mindrecord import build_mindrecord
from demo.data import generate_demo
from src.data.finetune_data import build_caption_dataset
from src.data.manifest import read_manifest
from src.data.pretrain_data import PRETRAIN_TASKS, build_eval_dataset, build_pretrain_dataset
from src.data.regions import box_geometry, pack_regions
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError
from src.models.opt import build_model
from src.tasks.pretrain import build_task
from tests.helpers import model_config

DIM, REGIONS, B = 24, 6, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    generate_demo(root, 12, 4, 0, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, build_vocab([t for n in ("train.jsonl", "val.jsonl")
                                    for t in manifest_texts(read_manifest(root / n))]))
    rng = np.random.default_rng(0)
    (root / "regions").mkdir()
    stored, lines = {}, []
    for i, line in enumerate((root / "train.jsonl").read_text(encoding="utf-8").splitlines()):
        sample = json.loads(line)
        k = 3 + i % 6                                       # 3 .. 8 regions: some padded, some cut to 6
        feat = rng.standard_normal((k, DIM)).astype(np.float32)
        path = root / "regions" / f"{sample['id']}.npz"
        if i % 2:
            xyxy = np.sort(rng.uniform(0, 100, (k, 2, 2)), 1).reshape(k, 4)[:, [0, 2, 1, 3]]
            np.savez(path, feat=feat, pred_boxes=xyxy, width=120, height=100)
            boxes = box_geometry(xyxy, 120, 100)
        else:
            boxes = rng.random((k, 7)).astype(np.float32)
            np.savez(path, feat=feat, boxes=boxes)
        stored[sample["id"]] = (feat, boxes)
        sample.pop("image")
        lines.append(json.dumps({**sample, "regions": f"regions/{sample['id']}.npz"}, ensure_ascii=False))
    (root / "train_regions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(root / "train.mindrecord")
    report = build_mindrecord(str(root / "train_regions.jsonl"), out, vocab, workers=1, max_frames=256)
    tokenizer = Tokenizer(vocab)
    cfg = model_config("tiny", [f"model.text.vocab_size={tokenizer.vocab_size}", f"data.vocab={vocab}",
                                "model.image.mode=features", f"model.image.feature_dim={DIM}",
                                f"model.image.max_regions={REGIONS}", "model.audio.max_frames=32"])
    ids = [json.loads(line)["id"] for line in lines]
    return {"root": root, "path": out, "report": report, "cfg": cfg, "tokenizer": tokenizer, "stored": stored,
            "ids": ids, "lines": lines, "vocab": vocab}


def batches(dataset):
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def test_manifest_regions_become_a_validated_mindrecord_column(data):
    report = data["report"]
    assert report["accepted"] == 12 and report["rejected"] == 0
    assert report["settings"]["region_dim"] == DIM and report["settings"]["region_box_dim"] == 7
    meta = json.loads(open(data["path"] + ".meta.json", encoding="utf-8").read())
    assert meta["has_regions"] and not meta["has_image"]


def test_every_pretraining_task_and_the_eval_pipeline_feed_packed_regions(data):
    cfg, tok = data["cfg"], data["tokenizer"]
    for task in PRETRAIN_TASKS:
        if task == "id":
            continue  # needs image tokens, which this data has not
        (batch, *_) = batches(build_pretrain_dataset(data["path"], task, cfg, tok, B, 0))
        assert batch["image"].shape == (B, REGIONS, DIM + 7 + 1), task
    (batch,) = batches(build_eval_dataset(data["path"], cfg, tok, 12, columns=["index", "image"]))
    for index, packed in zip(batch["index"], batch["image"]):
        feat, boxes = data["stored"][data["ids"][int(index)]]
        np.testing.assert_allclose(packed, pack_regions(feat, boxes, REGIONS), rtol=1e-6)
    (batch, *_) = batches(build_caption_dataset(data["path"], cfg, tok, B, 0))
    assert batch["image"].shape == (B, REGIONS, DIM + 8)


def test_mvm_in_features_mode_trains_on_real_regions_only(data, pynative):
    cfg, tok = data["cfg"], data["tokenizer"]
    (batch, *_) = batches(build_pretrain_dataset(data["path"], "mvm", cfg, tok, B, 0))
    model = build_model(cfg.model)
    task = build_task("mvm", model, cfg.pretrain, has_audio=True)
    loss = task(*[Tensor(batch[name]) for name in task.input_names])
    assert np.isfinite(float(loss.asnumpy()))


def test_bad_region_files_are_rejected_and_mismatched_models_refused(data, tmp_path):
    root = data["root"]
    lines = list(data["lines"])
    np.savez(root / "regions" / "bad.npz", feat=np.zeros((2, DIM + 1), np.float32), boxes=np.zeros((2, 7)))
    bad = json.loads(lines[1])
    bad.update(id="bad", regions="regions/bad.npz")
    missing = json.loads(lines[2])
    missing.update(id="missing")
    missing.pop("regions")
    (root / "mixed.jsonl").write_text("\n".join(lines[:1] + [json.dumps(bad), json.dumps(missing)]) + "\n",
                                      encoding="utf-8")
    report = build_mindrecord(str(root / "mixed.jsonl"), str(tmp_path / "m.mindrecord"), data["vocab"], workers=1)
    assert report["rejected_by_reason"] == {"bad_regions": 1, "missing_regions": 1}
    wrong = data["cfg"].with_updates({"model.image.feature_dim": DIM + 1})
    with pytest.raises(UserError, match="model.image.feature_dim"):
        build_pretrain_dataset(data["path"], "mlm", wrong, data["tokenizer"], B, 0)
    pixels = data["cfg"].with_updates({"model.image.mode": "pixels"})
    with pytest.raises(UserError, match="has no images"):
        build_pretrain_dataset(data["path"], "mlm", pixels, data["tokenizer"], B, 0)


def test_features_mode_model_exports_its_caption_graphs_and_they_caption_npz_files(data, tmp_path):
    """MindIR export of a features-mode model takes the packed region column; the exported graphs caption region
    files like the checkpoint does."""
    from src.inference.export_graphs import export_model
    from src.inference.pipeline import Captioner
    cfg = data["cfg"].with_updates({"caption.strategy": "greedy", "caption.max_len": 4,
                                    "caption.no_repeat_ngram": 0})
    model = build_model(cfg.model)
    model.set_train(False)
    manifest = export_model(cfg, model, "caption", str(tmp_path / "cap"))
    feat, boxes = data["stored"][data["ids"][0]]
    np.savez(tmp_path / "a.npz", feat=feat, boxes=boxes)
    exported = Captioner(None, mindir=manifest).caption(str(tmp_path / "a.npz"))
    assert isinstance(exported, str)
