"""python -m src.data.split: images never straddle two splits, sizes as asked, paths still resolve, order-free."""
import json

import pytest

from src.data import split
from src.data.manifest import read_manifest
from src.utils.cli import run_main

IMAGES = [f"img{i:02d}" for i in range(10)]


def write_lines(path, lines):
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


def source_lines():
    """Ten captioned images under imgs/ (one with audio) and two questions about each of the first four images."""
    lines = [{"id": name, "image": f"imgs/{name}.jpg", "captions": [f"第{i}张图", "一个圆"]}
             for i, name in enumerate(IMAGES)]
    lines[3]["audio"] = "wav/img03.wav"
    lines += [{"id": f"q{i}{k}", "image": f"imgs/{IMAGES[i]}.jpg", "image_id": IMAGES[i], "question": "几个圆？",
               "answers": ["1"]} for i in range(4) for k in range(2)]
    return lines


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "src" / "all.jsonl"
    path.parent.mkdir()
    write_lines(path, source_lines())
    return path


def split_of(out_dir):
    return {name: read_manifest(str(out_dir / f"{name}.jsonl")) for name in split.SPLITS}


def test_sizes_groups_and_paths(manifest, tmp_path):
    out = tmp_path / "out" / "mine"
    assert split.main(["--manifest", str(manifest), "--out_dir", str(out), "--val", "3", "--test", "0.2"]) == 0
    parts = split_of(out)
    images = {name: {s["image_id"] for s in samples} for name, samples in parts.items()}
    # test: round(0.2 * 10) = 2 images, val: 3 images, train: the other 5; no image in two splits
    assert [len(images[n]) for n in split.SPLITS] == [5, 3, 2]
    assert set().union(*images.values()) == set(IMAGES) and sum(map(len, images.values())) == 10
    # every line kept once; the questions went with their image
    assert sum(map(len, parts.values())) == len(source_lines())
    for name, samples in parts.items():
        for s in samples:
            assert s["image_id"] in images[name]
            # relative paths were rewritten: they resolve to the original files
            assert s["image_path"] == str(manifest.parent / "imgs" / f"{s['image_id']}.jpg")
    audio = [s for samples in parts.values() for s in samples if "audio_path" in s]
    assert [a["audio_path"] for a in audio] == [str(manifest.parent / "wav" / "img03.wav")]
    report = json.loads((out / "split_report.json").read_text())
    assert {n: (p["images"], p["samples"]) for n, p in report["splits"].items()} == {
        n: (len(images[n]), len(parts[n])) for n in split.SPLITS}


def test_the_split_depends_on_the_seed_not_on_the_line_order(manifest, tmp_path):
    split.split_manifest(str(manifest), str(tmp_path / "a"), 3, 2, seed=0)
    shuffled = tmp_path / "src" / "shuffled.jsonl"
    write_lines(shuffled, source_lines()[::-1])
    split.split_manifest(str(shuffled), str(tmp_path / "b"), 3, 2, seed=0)
    split.split_manifest(str(manifest), str(tmp_path / "c"), 3, 2, seed=1)
    ids = {k: {n: sorted(s["id"] for s in v) for n, v in split_of(tmp_path / k).items()} for k in "abc"}
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]
    # the rule itself: images in sha256(seed, image_id) order, test first
    order = sorted(IMAGES, key=lambda g: split.group_rank(0, g))
    assert sorted({s["image_id"] for s in split_of(tmp_path / "a")["test"]}) == sorted(order[:2])


def test_bad_requests_are_one_line_errors(manifest, tmp_path, capsys):
    def fails(*args):
        assert run_main(split.main, ["--manifest", str(manifest), *args]) == 2
        return capsys.readouterr().err
    assert "exceed the 10 images" in fails("--out_dir", str(tmp_path / "x"), "--val", "6", "--test", "5")
    assert "must be whole" in fails("--out_dir", str(tmp_path / "x"), "--val", "2.5")
    assert "must be >= 0" in fails("--out_dir", str(tmp_path / "x"), "--test", "-1")
    own = tmp_path / "own"
    own.mkdir()
    (own / "train.jsonl").write_text(manifest.read_text(encoding="utf-8"), encoding="utf-8")
    assert run_main(split.main, ["--manifest", str(own / "train.jsonl"), "--out_dir", str(own)]) == 2
    assert "overwritten by its own split" in capsys.readouterr().err
