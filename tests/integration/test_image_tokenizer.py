"""End to end: train the tiny image tokenizer, extract image tokens, decode them, and feed the pretrain `id` task."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT
from tests.integration.conftest import COMPILE_CACHE, subprocess_env

TRAIN = os.path.join(ROOT, "scripts", "train_image_tokenizer.py")
TINY_VQ = os.path.join(ROOT, "config", "vq", "tiny.yaml")


@pytest.fixture(scope="module")
def vq_run(tiny_data, tmp_path_factory):
    """A finished tiny tokenizer run: MindRecord for training, a manifest for validation."""
    out_dir = str(tmp_path_factory.mktemp("vq_run"))
    cmd = [sys.executable, TRAIN, "--config", TINY_VQ, "--set",
           f"data.train={os.path.relpath(tiny_data['train'], tiny_data['root'])}", "data.val=val.jsonl",
           f"run.output_dir={out_dir}", f"run.compile_cache_dir={COMPILE_CACHE}"]
    done = subprocess.run(cmd, cwd=tiny_data["root"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out_dir


@pytest.mark.slow
def test_training_writes_checkpoints_results_and_a_reconstruction_grid(vq_run):
    with open(os.path.join(vq_run, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["step"] == 6 and results["images"] == 8 and results["codes_per_image"] == 16
    assert 0 < results["psnr"] < 100 and 1.0 <= results["perplexity"] <= 16
    assert 0 < results["used_fraction"] <= 1 and results["used_codes"] == round(16 * results["used_fraction"])
    assert os.path.isfile(os.path.join(vq_run, "results.md"))
    with Image.open(os.path.join(vq_run, "reconstructions.png")) as grid:
        assert grid.size == (8 * 32 + 7 * 2, 32)  # 4 original / reconstruction pairs in one row, 2 px gaps
    assert sorted(os.listdir(os.path.join(vq_run, "checkpoints"))) == ["step_00000003", "step_00000006"]
    with open(os.path.join(vq_run, "metrics.jsonl"), encoding="utf-8") as f:
        steps = [json.loads(line) for line in f if '"step"' in line and '"eval"' not in line]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_extracted_tokens_decode_and_feed_the_pretrain_id_task(vq_run, tiny_data, tmp_path):
    from src.config import load_config
    from src.data.build_mindrecord import build_mindrecord
    from src.inference.image_tokens import main
    from src.data.labels import IMAGE_EOS_ID, codes_from_tokens
    from src.data.pretrain_data import build_pretrain_dataset
    from src.data.tokenizer import Tokenizer

    ckpt = os.path.join(vq_run, "checkpoints", "step_00000006")
    out = str(tmp_path / "tokens" / "train.jsonl")
    assert main(["--vq", ckpt, "--manifest", os.path.join(tiny_data["root"], "train.jsonl"), "--out", out,
                 "--batch_size", "8"]) == 0
    with open(out, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 32
    grids = {}
    for line in lines:
        codes = np.load(os.path.join(tmp_path, "tokens", line["image_tokens"]))
        assert codes.shape == (4, 4) and codes.dtype == np.int32 and 0 <= codes.min() and codes.max() < 16
        assert os.path.isfile(os.path.join(tmp_path, "tokens", line["image"]))  # re-rooted image path
        grids[line["id"]] = codes.reshape(-1)

    png = str(tmp_path / "decoded.png")
    first = os.path.join(tmp_path, "tokens", lines[0]["image_tokens"])
    assert main(["--vq", ckpt, "--decode", first, "--out", png]) == 0
    with Image.open(png) as image:
        assert image.size == (32, 32) and image.mode == "RGB"

    record = str(tmp_path / "train_id.mindrecord")
    build_mindrecord(out, record, tiny_data["vocab"], workers=1, max_frames=256)
    cfg = load_config(os.path.join(ROOT, "config", "pretrain", "tiny.yaml"),
                      [f"data.vocab={tiny_data['vocab']}", "pretrain.tasks.id=1.0"])
    tokenizer = Tokenizer(cfg.data.vocab, cfg.data.lower_case)
    cfg = cfg.with_updates({"model.text.vocab_size": tokenizer.vocab_size})
    batch = next(build_pretrain_dataset(record, "id", cfg, tokenizer, 4, 0).create_dict_iterator(
        num_epochs=1, output_numpy=True))
    known = {tuple(g) for g in grids.values()}
    for target in batch["img_dec_target"]:
        assert target[16] == IMAGE_EOS_ID
        assert tuple(codes_from_tokens(target)) in known


def test_extraction_errors_are_one_line(tmp_path, capsys):
    from src.utils.cli import run_main
    from src.inference.image_tokens import main
    assert run_main(main, ["--vq", str(tmp_path / "missing"), "--decode", "x.npy", "--out", "x.png"]) == 2
    assert capsys.readouterr().err.startswith("error: no config for VQ checkpoint")
    assert run_main(main, ["--vq", "c", "--out", "x.png"]) == 2
    assert "exactly one of --manifest" in capsys.readouterr().err


def _load_training_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_image_tokenizer", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _val_codes(vq, manifest, image_size):
    from src.data.image_dataset import ImageSource
    source = ImageSource(manifest, 1)
    batches = source.dataset(np.arange(len(source)), image_size, 8)
    return np.concatenate([vq.encode(b["image"]) for b in batches.create_dict_iterator(num_epochs=1,
                                                                                        output_numpy=True)])


@pytest.mark.slow
def test_a_reloaded_checkpoint_encodes_exactly_like_the_model_that_was_trained(tiny_data, tmp_path):
    """The codebook buffers (written with ops.assign inside the train step) reach the checkpoint: load_vq gives the
    same codes as the in-training model, and the usage of those codes is what the run reported."""
    from src.engine.launch import run_training
    from src.inference.loading import load_vq
    from src.models.vq import codebook_usage
    script = _load_training_script()
    out_dir = str(tmp_path / "vq")
    val = os.path.join(tiny_data["root"], "val.jsonl")
    args = script.trainer_parser(script.__doc__).parse_args(
        ["--config", TINY_VQ, "--set", f"data.train={tiny_data['train']}", f"data.val={val}",
         f"run.output_dir={out_dir}", "run.compile_cache=false", "train.eval_every=3"])
    trained = {}

    def build(cfg, dist):
        cfg, trainer = script.build_tokenizer_training(cfg, dist)
        trained["vq"] = trainer.model
        return cfg, trainer

    assert run_training(args, build) == 0
    trained["vq"].set_train(False)
    in_training = _val_codes(trained["vq"], val, 32)
    final = load_vq(os.path.join(out_dir, "checkpoints", "step_00000006"))
    reloaded = _val_codes(final, val, 32)
    assert in_training.shape == (8, 4, 4)
    np.testing.assert_array_equal(reloaded, in_training)
    assert len(np.unique(reloaded.reshape(8, -1), axis=0)) > 1  # not every image collapsed onto the same codes

    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    usage = codebook_usage(reloaded, 16)
    assert usage["used_codes"] == results["used_codes"]
    assert usage["perplexity"] == pytest.approx(results["perplexity"], rel=1e-9)

    # an intermediate checkpoint too: step 3 encodes as the evaluation at step 3 measured
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        at_step_3 = next(r["eval"] for r in map(json.loads, f) if r.get("eval", {}).get("step") == 3)
    middle = codebook_usage(_val_codes(load_vq(os.path.join(out_dir, "checkpoints", "step_00000003")), val, 32), 16)
    assert middle["used_fraction"] == pytest.approx(at_step_3["used_fraction"], rel=1e-9)
    assert middle["perplexity"] == pytest.approx(at_step_3["perplexity"], rel=1e-9)
