"""Markdown tables and result files."""
import json
import os

import numpy as np
import pytest

from src.utils.results import markdown_table, write_results
from src.utils.files import atomic_write_text


def test_markdown_table_formats_aligns_and_escapes():
    rows = [{"model": "OPT-tiny", "ir_r1": 12.3456, "n": 150},
            {"model": "chance | random", "ir_r1": np.float32(0.5)},
            {"model": "multi\nline", "ir_r1": None, "n": np.int64(7)}]
    assert markdown_table(rows, ["model", "ir_r1", "n"]) == (
        "| model | ir_r1 | n |\n"
        "|---|---:|---:|\n"
        "| OPT-tiny | 12.35 | 150 |\n"
        "| chance \\| random | 0.50 | - |\n"
        "| multi line | - | 7 |\n")


def test_markdown_table_float_format_and_lists():
    table = markdown_table([{"bleu4": 0.123456, "skipped": ["METEOR", "PTBTokenizer"]}], ["bleu4", "skipped"],
                           floatfmt=".3f")
    assert table.splitlines()[1:] == ["|---:|---|", "| 0.123 | METEOR, PTBTokenizer |"]


def test_write_results_with_a_table(tmp_path):
    results = {"ir_r1": np.float64(50.0), "per_k": np.array([1, 2]), "note": "中文"}
    rows = [{"name": "ours", "ir_r1": 50.0}, {"name": "chance", "ir_r1": 10.0, "tr_r1": 20.0}]
    json_path, md_path = write_results(tmp_path / "out", "retrieval", results, table_rows=rows)
    assert json_path == os.path.join(tmp_path / "out", "retrieval.json")
    text = open(json_path, encoding="utf-8").read()
    assert '"note": "中文"' in text and text.startswith('{\n  "ir_r1": 50.0')
    assert json.loads(text) == {"ir_r1": 50.0, "per_k": [1, 2], "note": "中文"}
    assert open(md_path, encoding="utf-8").read() == (
        "# retrieval\n\n"
        "| name | ir_r1 | tr_r1 |\n"
        "|---|---:|---:|\n"
        "| ours | 50.00 | - |\n"
        "| chance | 10.00 | 20.00 |\n")
    assert sorted(os.listdir(tmp_path / "out")) == ["retrieval.json", "retrieval.md"]   # no temporary files left


def test_write_results_without_a_table_lists_flattened_metrics(tmp_path):
    _, md_path = write_results(tmp_path, "caption", {"cider_d": 1.5, "zh": {"bleu4": 0.25}, "skipped": ["METEOR"]})
    assert open(md_path, encoding="utf-8").read().splitlines()[2:] == [
        "| metric | value |", "|---|---|", "| cider_d | 1.50 |", "| zh.bleu4 | 0.25 |", "| skipped | METEOR |"]


def test_atomic_write_replaces_and_leaves_nothing_behind_on_failure(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(TypeError):
        atomic_write_text(path, None)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]
