"""export.py, the MindIR runner (src.inference.exported_model) and eval.py --mindir on tiny models of the session's demo
data. The "runs" are written directly (config.yaml + one checkpoint of random weights) instead of trained, which
keeps the file fast; random weights with a wide spread still give varied, input-dependent outputs."""
import json
import os
import subprocess

import mindspore as ms
import numpy as np
import pytest

import eval as eval_cli
import export as export_cli
from src.utils.cli import run_main
from src.config import save_config
from src.data.build_mindrecord import build_mindrecord
from src.data.tokenizer import Tokenizer
from src.weights.checkpoint import save_checkpoint
from src.inference.exported_model import ExportedModel
from src.inference.export_graphs import GenerationEncoder
from src.inference.generation import decoding_cells, generate
from src.inference.loading import load_trained_model, resolve_config
from src.inference.text_generator import TextGenerator, decoding_settings
from src.inference.retrieval import AudioTower, ImageTower, PairScorer, TextTower
from src.tasks.caption import MemoryEncoder
from tests.helpers import ROOT

TOL = 1e-5


def make_run(out_dir, task, data, seed, *extra):
    """<out_dir>/config.yaml and <out_dir>/checkpoints/step_00000000 of a model with N(0, 0.3) weights (LayerNorms
    left at identity); `extra` are further config overrides."""
    overrides = [f"data.{split}={data[split]}" for split in ("train", "val", "test")] + \
                [f"data.vocab={data['vocab']}", f"run.output_dir={out_dir}", *extra]
    cfg = resolve_config(config_path=os.path.join(ROOT, "config", task, "tiny.yaml"), overrides=overrides)
    from src.models.opt import build_model
    model = build_model(cfg.model)
    rng = np.random.default_rng(seed)
    tensors = {}
    for p in model.get_parameters():
        norm = p.name.endswith((".gamma", ".beta"))
        tensors[p.name] = p.asnumpy() if norm else rng.normal(0.0, 0.3, p.shape).astype(np.float32)
    save_config(cfg, out_dir)
    return save_checkpoint(os.path.join(out_dir, "checkpoints", "step_00000000"), tensors, step=0)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    vqa = {"vocab": tiny_data["vocab"]}
    for split in ("train", "val", "test"):
        vqa[split] = str(root / f"{split}_vqa.mindrecord")
        build_mindrecord(os.path.join(tiny_data["root"], f"{split}_vqa.jsonl"), vqa[split], vqa["vocab"], workers=1)
    # the caption run leaves audio out (fewer graphs to compile); VQA and retrieval keep it
    return {"caption": make_run(str(root / "caption"), "caption", tiny_data, 0, "data.use_audio=false"),
            "vqa": make_run(str(root / "vqa"), "vqa", vqa, 1),
            "retrieval": make_run(str(root / "retrieval"), "retrieval", tiny_data, 2)}


def export(task, ckpt, prefix, *extra):
    assert export_cli.main(["--task", task, "--ckpt_file", ckpt, "--file_name", str(prefix), *extra]) == 0
    return ExportedModel(str(prefix), task)


def close(graph_out, cell_out):
    graph_out = graph_out if isinstance(graph_out, tuple) else (graph_out,)
    cell_out = cell_out if isinstance(cell_out, tuple) else (cell_out,)
    assert len(graph_out) == len(cell_out)
    for g, c in zip(graph_out, cell_out):
        assert g.shape == c.shape
        np.testing.assert_allclose(g.asnumpy(), c.asnumpy(), rtol=TOL, atol=TOL)


def images(batch, seed):
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


@pytest.mark.slow
def test_caption_export_matches_the_cells_at_two_batch_sizes(runs, tmp_path):
    exported = export("caption", runs["caption"], tmp_path / "cap")
    manifest = json.load(open(tmp_path / "cap_export.json", encoding="utf-8"))
    assert sorted(manifest["graphs"]) == ["encoder", "step"]
    assert (manifest["dynamic_batch"], manifest["max_len"], manifest["decoder_layers"]) == (True, 16, 2)
    assert (manifest["bos_id"], manifest["eos_id"], manifest["pad_id"]) == (2, 3, 0)  # [CLS], [SEP], [PAD]
    assert manifest["graphs"]["encoder"]["inputs"] == [{"name": "image", "shape": [None, 3, 32, 32],
                                                        "dtype": "float32", "batched": True}]
    assert len(manifest["graphs"]["step"]["inputs"]) == 3 + 1 + 4 * 2  # token, position, origin, state
    assert not [name for name in os.listdir(tmp_path) if "partial" in name]

    cfg = exported.cfg
    model = load_trained_model(cfg, runs["caption"])
    memory_encoder, cells = MemoryEncoder(model, False, False), decoding_cells(model.text_decoder)
    settings = {**decoding_settings(cfg, "caption"), "strategy": "beam", "beam_size": 3}
    generator = exported.text_generator(Tokenizer(cfg.data.vocab), settings)
    captions = set()
    for batch in (1, 3):
        x = images(batch, batch)
        memory = memory_encoder(ms.Tensor(x))
        state = cells.prepare(*memory)
        close(exported.graph("encoder")(x), state)
        rows = 3 * batch
        state = tuple(ms.Tensor(np.repeat(s.asnumpy(), 3, 0)) for s in state)
        token = ms.Tensor(np.arange(4, 4 + rows, dtype=np.int32)[:, None])
        origin = ms.Tensor(np.arange(rows, dtype=np.int32)[::-1].copy())
        position = ms.Tensor(np.array([0], np.int32))
        close(exported.graph("step")(token, position, origin, *state), cells.step(token, position, origin, *state))

        tokens, scores = generator.generate(*generator.memory(x))
        reference = generate(model.text_decoder, *memory, **generator.special, **settings)
        np.testing.assert_array_equal(tokens, reference[0])
        np.testing.assert_allclose(scores, reference[1], rtol=TOL)
        captions |= {tuple(row) for row in tokens}
    assert len(captions) > 1  # input-dependent captions, not one constant string


@pytest.mark.slow
def test_vqa_export_matches_the_encoder_and_eval_mindir_equals_eval_ckpt(runs, tmp_path):
    exported = export("vqa", runs["vqa"], tmp_path / "export" / "vqa", "--dynamic_batch")
    graphs = exported.manifest["graphs"]
    assert sorted(graphs) == ["encoder", "encoder_audio", "step"]  # one dynamic step graph for both encoders
    assert [spec["name"] for spec in graphs["encoder"]["inputs"]] == ["question_ids", "question_mask", "image"]
    assert [spec["name"] for spec in graphs["encoder_audio"]["inputs"]][-2:] == ["audio", "frame_mask"]
    model = load_trained_model(exported.cfg, runs["vqa"])
    encoder = GenerationEncoder(model, True, False)
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        ids = rng.integers(5, 40, (batch, 16)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[:, 9:] = 0
        ids[mask == 0] = 0
        x = images(batch, batch)
        close(exported.graph("encoder")(ids, mask, x), encoder(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(x)))

    outputs = {}  # the test split has audio: this runs encoder_audio and the step graph at another memory length
    for name, source in (("ckpt", ["--ckpt", runs["vqa"]]), ("mindir", ["--mindir", str(tmp_path / "export")])):
        out = tmp_path / name
        assert eval_cli.main(["--task", "vqa", *source, "--out_dir", str(out), "--batch_size", "4"]) == 0
        results = json.load(open(out / "vqa_test.json", encoding="utf-8"))
        predictions = [json.loads(line) for line in open(out / "vqa_test_predictions.jsonl", encoding="utf-8")]
        outputs[name] = (results, predictions)
    assert outputs["mindir"] == outputs["ckpt"]
    assert outputs["ckpt"][0]["n_questions"] == 24 and len({p["answer"] for p in outputs["ckpt"][1]}) > 1


@pytest.mark.slow
def test_retrieval_export_matches_every_tower_at_two_batch_sizes(runs, tmp_path):
    exported = export("retrieval", runs["retrieval"], tmp_path / "ret")
    assert sorted(exported.manifest["graphs"]) == ["audio", "image", "pair", "text"]
    model = load_trained_model(exported.cfg, runs["retrieval"])
    text, image, audio, pair = TextTower(model), ImageTower(model), AudioTower(model), PairScorer(model)
    rng = np.random.default_rng(1)
    a = exported.cfg.model.audio
    for batch in (2, 5):
        ids = ms.Tensor(rng.integers(5, 40, (batch, 16)).astype(np.int32))
        mask = ms.Tensor(np.ones((batch, 16), np.int32))
        x = ms.Tensor(images(batch, batch))
        width = a.n_mels if a.mode == "mel" else a.feature_dim
        sound = ms.Tensor(rng.standard_normal((batch, a.max_frames, width)).astype(np.float32))
        frames = ms.Tensor(np.repeat((np.arange(a.max_frames) < a.max_frames - 4 * batch)[None], batch, 0), ms.int32)
        t, i = text(ids, mask), image(x)
        close(exported.graph("text")(ids, mask), t)
        close(exported.graph("image")(x), i)
        close(exported.graph("audio")(sound, frames), audio(sound, frames))
        close(exported.graph("pair")(t[0], t[1], i[0], i[1]), pair(t[0], t[1], i[0], i[1]))


def test_unsupported_formats_fail_clearly_and_write_nothing(runs, tmp_path, capsys):
    prefix = str(tmp_path / "out" / "cap")
    base = ["--task", "caption", "--ckpt_file", runs["caption"], "--file_name", prefix]
    assert run_main(export_cli.main, base + ["--file_format", "AIR"]) == 2
    assert "AIR export needs an Ascend device" in capsys.readouterr().err
    assert run_main(export_cli.main, base + ["--file_format", "ONNX"]) == 2
    assert "ONNX export needs static shapes" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
    assert run_main(eval_cli.main, ["--task", "vqa", "--mindir", prefix]) == 2
    assert "no export found" in capsys.readouterr().err


@pytest.mark.slow
def test_run_export_script_dry_run_and_static_batch_export(runs, tmp_path):
    env = {**os.environ, "GLOG_v": "3", "DRY_RUN": "1"}
    script = os.path.join(ROOT, "scripts", "run_export.sh")
    prefix = str(tmp_path / "static" / "cap")
    done = subprocess.run(["bash", script, "caption", runs["caption"], prefix, "2"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1:] == [os.path.join(ROOT, "export.py"), "--task", "caption", "--ckpt_file",
                                       runs["caption"], "--file_name", prefix, "--file_format", "MINDIR",
                                       "--batch_size", "2"]
    env["DRY_RUN"] = "0"
    done = subprocess.run(["bash", script, "caption", runs["caption"], prefix, "2"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = ExportedModel(prefix, "caption")
    graphs = exported.manifest["graphs"]
    assert graphs["encoder"]["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert graphs["step"]["inputs"][0]["shape"] == [6, 1]  # 2 rows x beam 3
    model = load_trained_model(exported.cfg, runs["caption"])
    settings = decoding_settings(exported.cfg, "caption", strategy="greedy")
    x = images(1, 7)  # one row: padded to the static 2 rows and cut back
    tokenizer = Tokenizer(exported.cfg.data.vocab)
    expected = TextGenerator(model, tokenizer, settings)
    got = exported.text_generator(tokenizer, settings)
    np.testing.assert_array_equal(got.generate(*got.memory(x))[0], expected.generate(*expected.memory(x))[0])
