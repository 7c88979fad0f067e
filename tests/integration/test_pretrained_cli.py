"""checkpoint.init_towers through the entry points: train_retrieval.main runs a step from a Chinese-CLIP file and
writes the load report; scripts/import_pretrained.py writes a checkpoint eval.py reads."""
import json
import os
import sys

import numpy as np
import pytest

import eval as eval_cli
import train_retrieval
from src.data.build_mindrecord import build_mindrecord
from demo.data import generate_demo
from src.data.manifest import read_manifest
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from tests.helpers import ROOT
from tests.unit.test_pretrained_encoders import BERT_MATH, CLIP_MATH, cnclip_state, write

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import import_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained_cli")
    generate_demo(root, 8, 4, 4, image_size=32, audio="tones", workers=1)
    tokens = build_vocab(manifest_texts(read_manifest(root / "train.jsonl")))
    write_vocab(str(root / "vocab.txt"), tokens)
    for split in ("train", "val", "test"):
        build_mindrecord(str(root / f"{split}.jsonl"), str(root / f"{split}.mindrecord"), str(root / "vocab.txt"),
                         workers=1)
    weights = write(root / "cnclip", cnclip_state(np.random.default_rng(0), 4, vocab=len(tokens)), tokens)
    return root, weights


def overrides(root, weights, out):
    return [f"run.output_dir={out}", f"data.vocab={root / 'vocab.txt'}", "run.compile_cache=false",
            f"data.train={root / 'train.mindrecord'}", f"data.test={root / 'test.mindrecord'}", "data.val=''",
            *BERT_MATH, *CLIP_MATH, f"checkpoint.init_towers={weights}"]


@pytest.mark.slow
def test_train_retrieval_starts_from_chinese_clip_and_writes_the_load_report(data, tmp_path):
    """(with checkpoint.resume=auto: a first start without a checkpoint still loads the pre-trained towers)"""
    root, weights = data
    run = tmp_path / "run"
    sets = overrides(root, weights, run) + ["train.steps=1", "checkpoint.every=1", "checkpoint.resume=auto",
                                            "train.freeze=[text_encoder,image_encoder]"]
    assert train_retrieval.main(["--config", f"{ROOT}/config/retrieval/tiny.yaml", "--set", *sets]) == 0
    report = json.loads((run / "load_report.json").read_text(encoding="utf-8"))
    assert report["counts"]["mapped"] > 0 and report["counts"]["initialised"] > 0
    assert (run / "load_report.md").is_file() and (run / "checkpoints" / "step_00000001").is_dir()
    assert json.loads((run / "summary.json").read_text())["steps_this_run"] == 1


@pytest.mark.slow
def test_import_script_writes_a_checkpoint_eval_reads(data, tmp_path):
    root, weights = data
    out = tmp_path / "zeroshot"
    assert import_pretrained.main(["--config", f"{ROOT}/config/retrieval/tiny.yaml", "--set",
                                   *overrides(root, weights, out)]) == 0
    ckpt = out / "checkpoints" / "step_00000000"
    assert (out / "load_report.md").is_file() and (ckpt / "state.json").is_file()
    assert eval_cli.main(["--task", "retrieval", "--ckpt", str(ckpt), "--mode", "itc", "--batch_size", "4"]) == 0
    results = json.loads((out / "eval_retrieval" / "retrieval.json").read_text())
    assert "ir_r1" in json.dumps(results)


@pytest.mark.slow
def test_eval_warns_when_itc_scores_a_converted_released_checkpoint(data, tmp_path, capsys):
    """A converted released OPT (state.json meta converted_from) has no towers: --mode itc / itc_itm warn, itm not."""
    from src.weights.checkpoint import load_checkpoint, save_checkpoint
    root, weights = data
    out = tmp_path / "imported"
    assert import_pretrained.main(["--config", f"{ROOT}/config/retrieval/tiny.yaml", "--set",
                                   *overrides(root, weights, out)]) == 0
    tensors, _ = load_checkpoint(str(out / "checkpoints" / "step_00000000"))
    converted = tmp_path / "converted"
    save_checkpoint(str(converted), tensors, meta={"converted_from": "OPT_1-38_136.ckpt", "source": "zidongtaichu"})
    capsys.readouterr()
    for mode, warned in (("itc", True), ("itm", False)):
        assert eval_cli.main(["--task", "retrieval", "--ckpt", str(converted), "--config", str(out / "config.yaml"),
                              "--mode", mode, "--batch_size", "4", "--out", str(tmp_path / mode)]) == 0
        err = capsys.readouterr().err
        assert ("no contrastive towers" in err and "--mode itm" in err) == warned, (mode, err)
