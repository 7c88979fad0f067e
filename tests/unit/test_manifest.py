"""Manifest reading (validation, path resolution, normalisation) and atomic writing."""

import json
import os

import pytest

from src.data.manifest import captions_of, read_manifest, write_manifest
from src.errors import UserError


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def as_lines(*samples):
    return [json.dumps(sample, ensure_ascii=False) for sample in samples]


def test_read_resolves_paths_and_normalises(tmp_path):
    path = write_lines(
        tmp_path / "sub" / "m.jsonl",
        as_lines(
            {"id": "a", "image": "img/a.jpg", "text": "一只猫"},
            {"id": "b", "image": "../b.jpg", "captions": ["x", "y"], "image_id": "B", "lang": "en", "extra": 7},
        )
        + [""]
        + as_lines({"id": "q1", "image": "img/a.jpg", "question": "?", "answers": ["yes"], "audio": "a.npy"}),
    )
    a, b, q1 = read_manifest(path)
    assert a == {
        "id": "a",
        "image": "img/a.jpg",
        "image_path": str(tmp_path / "sub" / "img" / "a.jpg"),
        "captions": ["一只猫"],
        "image_id": "a",
        "lang": "zh",
    }
    assert b["image_path"] == str(tmp_path / "b.jpg")
    assert (b["image_id"], b["lang"], b["extra"], b["captions"]) == ("B", "en", 7, ["x", "y"])
    assert q1["audio_path"] == str(tmp_path / "sub" / "a.npy")
    assert (q1["question"], q1["answers"], captions_of(q1)) == ("?", ["yes"], [])


def test_line_that_is_not_json_names_the_line(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", as_lines({"id": "a", "text": "x"}) + ['{"id": "b", "text": '])
    with pytest.raises(UserError, match=r"m\.jsonl line 2: not valid JSON"):
        read_manifest(path)


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", as_lines({"id": "a"}, {"id": "b"}, {"id": "a"}))
    with pytest.raises(UserError, match="line 3: id 'a' already used on line 1"):
        read_manifest(path)


@pytest.mark.parametrize(
    "sample, message",
    [
        ({"image": "a.jpg"}, "missing required field 'id'"),
        ({"id": 3}, "'id' must be a string"),
        ({"id": "a", "captions": "one"}, "'captions' must be a list of strings"),
        ({"id": "a", "answers": [1]}, "'answers' must be a list of strings"),
        ({"id": "a", "rationales": "because"}, "'rationales' must be a list of strings"),
        ({"id": "a", "text": "x", "captions": ["y"]}, "both 'text' and 'captions'"),
        ({"id": "a", "captions": ["ok", " "]}, "empty caption"),
        ({"id": "a", "lang": "fr"}, "lang 'fr'"),
        ({"id": "a", "answers": ["x", "y"], "answer_scores": [1.0]}, "one per answer"),
        (["a"], "expected a JSON object"),
    ],
)
def test_invalid_samples(tmp_path, sample, message):
    path = write_lines(tmp_path / "m.jsonl", as_lines({"id": "ok"}, sample))
    with pytest.raises(UserError, match=f"line 2: .*{message}"):
        read_manifest(path)


def test_required_fields(tmp_path):
    lines = as_lines({"id": "a", "image": "a.jpg", "text": "x"}, {"id": "b", "text": "y"})
    path = write_lines(tmp_path / "m.jsonl", lines)
    assert len(read_manifest(path, required=("captions",))) == 2
    with pytest.raises(UserError, match="line 2: missing field 'image'; this data needs image, captions"):
        read_manifest(path, required=("image", "captions"))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_manifest(str(tmp_path / "none.jsonl"))


def test_write_then_read_round_trip(tmp_path):
    lines = as_lines({"id": "a", "image": "img/a.jpg", "text": "一只猫"}, {"id": "b", "answers": []})
    source = write_lines(tmp_path / "m.jsonl", lines)
    samples = read_manifest(source)
    target = tmp_path / "copy.jsonl"
    write_manifest(str(target), samples)
    content = target.read_text(encoding="utf-8")
    assert "一只猫" in content and "image_path" not in content
    assert read_manifest(str(target)) == samples
    assert sorted(os.listdir(tmp_path)) == ["copy.jsonl", "m.jsonl"]


def test_write_is_atomic(tmp_path):
    target = tmp_path / "m.jsonl"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(TypeError):
        write_manifest(str(target), [{"id": "a"}, {"id": "b", "extra": {1, 2}}])  # a set is not JSON
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["m.jsonl"]


def test_write_rejects_duplicate_ids(tmp_path):
    with pytest.raises(UserError, match=r"m.jsonl: samples 0 and 2 \(lines 1 and 3 of the file to write\) have the "
                                        r"same id 'a'"):
        write_manifest(str(tmp_path / "m.jsonl"), [{"id": "a"}, {"id": "b"}, {"id": "a"}])


def test_captions_of():
    assert captions_of({"text": "x"}) == ["x"]
    assert captions_of({"captions": ["x", "y"]}) == ["x", "y"]
    assert captions_of({"question": "q"}) == []
