"""train_retrieval.py and eval.py --task retrieval end to end on the tiny config and generated demo data."""
import json

import pytest

import eval as eval_cli
import train_retrieval
from src.data.build_mindrecord import build_mindrecord
from demo.data import generate_demo
from src.data.manifest import read_manifest
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval_cli")
    generate_demo(root, 8, 5, 5, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, build_vocab(manifest_texts(read_manifest(root / "train.jsonl"))))
    for split in ("train", "val", "test"):
        build_mindrecord(str(root / f"{split}.jsonl"), str(root / f"{split}.mindrecord"), vocab, workers=1)
    return root


@pytest.mark.slow
def test_fine_tune_then_evaluate_and_query(data, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [f"run.output_dir={run}", f"data.vocab={data / 'vocab.txt'}", "run.compile_cache=false",
            "train.steps=2", "train.eval_every=2", "checkpoint.every=2"] + \
           [f"data.{split}={data / f'{split}.mindrecord'}" for split in ("train", "val", "test")]
    assert train_retrieval.main(["--config", f"{ROOT}/config/retrieval/tiny.yaml", "--set", *sets]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"][0]["step"] == 2 and "ir_r1" in summary["evaluations"][0]
    best = next((run / "best").iterdir())

    index = tmp_path / "index.npz"
    assert eval_cli.main(["--task", "retrieval", "--ckpt", str(best), "--mode", "itc_itm", "--k", "2",
                          "--batch_size", "4", "--index_out", str(index)]) == 0
    results = json.loads((run / "eval_retrieval" / "retrieval.json").read_text())
    assert (results["n_images"], results["n_texts"], results["k"]) == (5, 25, 2)
    assert 0 < results["pairs_scored"] <= 25 * 2 + 5 * 2
    table = (run / "eval_retrieval" / "retrieval.md").read_text()
    assert "text→image (IR)" in table and "chance" in table and "audio→image" in table

    capsys.readouterr()
    assert eval_cli.main(["--task", "retrieval", "--ckpt", str(best), "--index", str(index),
                          "--query", "一只红色的圆", "--top", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 ") or
             line.startswith("| 2 ")]
    assert len(lines) == 2 and str(data / "images") in lines[0]
    single = [line.split("|")[3].strip() for line in lines]   # the ids of the two hits

    queries = tmp_path / "queries.txt"
    queries.write_text("一只红色的圆\n\n两个蓝色的方块\n", encoding="utf-8")
    assert eval_cli.main(["--task", "retrieval", "--ckpt", str(best), "--index", str(index),
                          "--queries", str(queries), "--top", "2", "--out", str(tmp_path / "q")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "q" / "query_hits.jsonl").read_text().splitlines()]
    assert [r["query"] for r in rows] == ["一只红色的圆", "两个蓝色的方块"]   # the blank line is skipped
    assert [h["id"] for h in rows[0]["hits"]] == single and [len(r["hits"]) for r in rows] == [2, 2]


def test_user_errors_exit_with_code_2(data, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"base: {ROOT}/config/retrieval/tiny.yaml\ndata: {{vocab: {data / 'vocab.txt'}}}\n")
    from src.utils.cli import run_main
    assert run_main(eval_cli.main, ["--task", "retrieval", "--ckpt", str(tmp_path / "none"), "--config",
                                    str(config), "--index", str(tmp_path / "missing.npz"), "--query", "圆"]) == 2
    assert "error:" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert run_main(eval_cli.main, ["--task", "retrieval", "--ckpt", str(tmp_path / "none"), "--config",
                                    str(config), "--index", "i.npz", "--queries", str(empty)]) == 2
    assert "holds no query" in capsys.readouterr().err
    assert run_main(train_retrieval.main, ["--config", str(config), "--set", "train.batch_size=1",
                                           f"data.train={data / 'train.mindrecord'}"]) == 2
    assert "batch_size must be >= 2" in capsys.readouterr().err
