"""Tests for the synthetic demo dataset generator (demo/data.py)."""
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo.data as demo
from demo.data import SceneObject
from src.errors import UserError

SIZES = {"n_train": 30, "n_val": 10, "n_test": 10}


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_wav(path):
    with wave.open(str(path), "rb") as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    meta = demo.generate_demo(out, **SIZES, seed=0, audio="tones", workers=1)
    return out, meta


def test_describe_scene_phrasings():
    one = (SceneObject("red", "circle", "big", "left"),)
    assert demo.describe_scene(one, "zh") == [
        "左边有一个红色的圆", "一个红色的大圆在图片左边", "图中左侧是一个红色圆形", "图片左边是一个大的红色圆",
        "画面左边有一个红色的圆，它很大"]
    two = (SceneObject("orange", "triangle", "small", "left"), SceneObject("blue", "triangle", "big", "right"))
    assert demo.describe_scene(two, "en") == [
        "an orange triangle on the left and a blue triangle on the right",
        "there is a small orange triangle on the left side and a big blue triangle on the right side",
        "the picture shows an orange triangle on the left and a blue triangle on the right",
        "two triangles: a small orange triangle on the left and a big blue triangle on the right",
        "on the right is a big blue triangle and on the left is a small orange triangle"]
    assert demo.describe_scene(two, "zh")[3] == "图片里有两个三角形：左边是一个小的橙色三角形，右边是一个大的蓝色三角形"


def test_render_question_answers():
    scene = (SceneObject("red", "circle", "big", "left"), SceneObject("red", "circle", "small", "right"))
    assert demo.render_question(scene, ("count", "circle"), "zh") == ("图中有几个圆？", "2")
    assert demo.render_question(scene, ("count", "square"), "en") == ("how many squares are there?", "0")
    assert demo.render_question(scene, ("colour", 1), "zh") == ("右边的圆是什么颜色？", "红色")
    assert demo.render_question(scene, ("shape", 0), "en") == ("what shape is on the left?", "circle")
    rng = np.random.default_rng(0)
    for _ in range(50):  # two identical-looking red circles: "where is the red circle?" has no single answer
        assert all(kind != "position" for kind, _ in demo.choose_questions(scene, rng))


def test_outputs_and_manifest_format(dataset):
    out, meta = dataset
    for split, n in (("train", 30), ("val", 10), ("test", 10)):
        zh, en = read_jsonl(out / f"{split}.jsonl"), read_jsonl(out / f"{split}_en.jsonl")
        vqa, vqa_en = read_jsonl(out / f"{split}_vqa.jsonl"), read_jsonl(out / f"{split}_vqa_en.jsonl")
        assert len(zh) == len(en) == n and len(vqa) == len(vqa_en) == 3 * n
        assert meta["splits"][split]["images"] == n and meta["splits"][split]["vqa_questions"] == 3 * n
        for row in zh:
            assert row["id"].startswith(split) and row["lang"] == "zh"
            assert (out / row["image"]).is_file() and (out / row["audio"]).is_file()
            assert len(row["captions"]) == 5 and len(set(row["captions"])) == 5
        assert all("audio" not in row and row["lang"] == "en" for row in en)
        image_ids = [row["id"] for row in zh]
        assert [q["id"] for q in vqa] == [f"{i}_q{k}" for i in image_ids for k in range(3)]
        assert all(q["image"] == f"images/{q['image_id']}.jpg" and len(q["answers"]) == 1 for q in vqa)
        # the rationale: the scene in the first phrasing ("左边有一个…", the only one that starts with a position)
        first = {row["id"]: [c for c in row["captions"] if c.startswith(("左边", "中间", "右边"))] for row in zh}
        assert all(len(c) == 1 for c in first.values())
        assert all(q["rationales"] == first[q["image_id"]] for q in vqa)
        captions_en = {row["id"]: row["captions"] for row in en}
        assert all(len(q["rationales"]) == 1 and q["rationales"][0] in captions_en[q["image_id"]] for q in vqa_en)
    assert meta["audio"]["mode"] == "tones" and "Audio mode: tones" in (out / "README.txt").read_text("utf-8")
    assert json.loads((out / "meta.json").read_text("utf-8")) == meta
    assert meta["vocab"]["colour"]["purple"] == {"zh": "紫色", "en": "purple"}


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    demo.generate_demo(tmp_path / "again", **SIZES, seed=0, audio="tones", workers=1)
    assert folder_bytes(tmp_path / "again") == folder_bytes(out)
    demo.generate_demo(tmp_path / "other", **SIZES, seed=1, audio="tones", workers=1)
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()
    assert (tmp_path / "other" / "images" / "train_000000.jpg").read_bytes() != \
        (out / "images" / "train_000000.jpg").read_bytes()


def test_worker_pool_gives_the_same_bytes_as_one_process(tmp_path):
    sizes = {"n_train": demo.POOL_THRESHOLD - 20, "n_val": 10, "n_test": 10}
    demo.generate_demo(tmp_path / "serial", **sizes, seed=3, audio="tones", workers=1)
    demo.generate_demo(tmp_path / "pool", **sizes, seed=3, audio="tones", workers=2)
    assert folder_bytes(tmp_path / "pool") == folder_bytes(tmp_path / "serial")


def test_splits_share_no_id_and_no_scene():
    samples = demo.plan_samples({"train": 2000, "val": 200, "test": 200}, 64, seed=0)
    hashes = {split: {demo.scene_hash(s["scene"]) for s in samples if s["split"] == split}
              for split in demo.SPLITS}
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert len({s["id"] for s in samples}) == 2400
    counts = [a for s in samples for q, a in s["qa"]["zh"] if q.startswith("图中有几个")]
    assert {"0", "1", "2"} <= set(counts)
    assert sum(len(s["scene"]) == 1 for s in samples) == 720


def test_pixels_captions_and_answers_agree_with_scene(dataset):
    out, meta = dataset
    palette = {c: np.array(rgb) for c, rgb in meta["colour_rgb"].items()}
    zh_words = meta["vocab"]
    scenes = {row["id"]: row for row in read_jsonl(out / "scenes.jsonl")}
    for split in demo.SPLITS:
        for row in read_jsonl(out / f"{split}.jsonl"):
            scene = scenes[row["id"]]
            pixels = np.asarray(Image.open(out / row["image"]).convert("RGB"), dtype=float)
            assert pixels.shape == (64, 64, 3) and pixels[0, 0].min() > 200  # plain light background
            for obj in scene["objects"]:
                x, y = int(obj["x"]), int(obj["y"])
                centre = pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
                nearest = min(palette, key=lambda c: np.abs(palette[c] - centre).sum())
                assert nearest == obj["colour"]
                expected_side = "left" if x < 64 / 3 else "right" if x > 128 / 3 else "middle"
                assert obj["position"] == expected_side
                for caption in row["captions"]:
                    assert zh_words["colour"][obj["colour"]]["zh"] in caption
                    assert zh_words["shape"][obj["shape"]]["zh"] in caption
            check_vqa_zh(read_jsonl(out / f"{split}_vqa.jsonl"), scenes, zh_words)


def check_vqa_zh(rows, scenes, words):
    """Answer every Chinese question independently from the scene spec and compare."""
    zh = {kind: {v["zh"]: k for k, v in table.items()} for kind, table in words.items()}
    for row in rows:
        objects = scenes[row["image_id"]]["objects"]
        question, answer = row["question"], row["answers"][0]
        if m := re.fullmatch(r"图中有几个(.+)？", question):
            assert answer == str(sum(o["shape"] == zh["shape"][m[1]] for o in objects))
        elif m := re.fullmatch(r"(?:图中的|(左边|右边)的)(.+)是什么颜色？", question):
            match = [o for o in objects if o["shape"] == zh["shape"][m[2]]
                     and (m[1] is None or o["position"] == zh["position"][m[1]])]
            assert {zh["colour"][answer]} == {o["colour"] for o in match}
        elif m := re.fullmatch(r"(左边|中间|右边)是什么形状？", question):
            (obj,) = [o for o in objects if o["position"] == zh["position"][m[1]]]
            assert zh["shape"][answer] == obj["shape"]
        else:
            m = re.fullmatch(r"(.+色)的(.+)在哪里？", question)
            (obj,) = [o for o in objects if (o["colour"], o["shape"]) == (zh["colour"][m[1]], zh["shape"][m[2]])]
            assert zh["position"][answer] == obj["position"]


def test_wav_length_follows_caption_and_content_sets_spectrum(dataset):
    out, _ = dataset
    per_token = 16000 * (demo.TONE_MS + demo.GAP_MS) // 1000
    for row in read_jsonl(out / "val.jsonl"):
        samples = read_wav(out / row["audio"])
        assert len(samples) == per_token * len(demo.caption_tokens(row["captions"][0]))
        assert np.array_equal(samples, demo.tone_audio(row["captions"][0]))
    assert demo.caption_tokens("图中，a red 圆") == ["图", "中", "a", "red", "圆"]
    same, other = demo.tone_audio("左边有一个红色的圆"), demo.tone_audio("左边有一个蓝色的圆")
    assert np.array_equal(same, demo.tone_audio("左边有一个红色的圆")) and len(same) == 9 * per_token
    assert not np.array_equal(same, other)
    tone = demo.tone_audio("红")[:16000 * demo.TONE_MS // 1000].astype(float)
    spectrum = np.abs(np.fft.rfft(tone, n=16000))  # 1 Hz bins
    peaks = sorted(np.argsort(spectrum)[-2:])
    expected = sorted(demo.token_frequencies("红"))
    assert all(abs(p - f) <= 20 for p, f in zip(peaks, expected)) and 300 <= expected[0] <= expected[1] <= 3000


def test_two_hundred_samples_generate(tmp_path):
    meta = demo.generate_demo(tmp_path / "d", n_train=160, n_val=20, n_test=20, audio="tones", workers=2)
    assert [meta["splits"][s]["images"] for s in demo.SPLITS] == [160, 20, 20]
    assert len(list((tmp_path / "d" / "audio").glob("*.wav"))) == 200


def test_cli_rerun_replaces_earlier_demo_and_refuses_other_folders(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--n_train", "6", "--n_val", "2", "--n_test", "2", "--audio", "tones"]) == 0
    assert demo.main(["--out", str(out), "--n_train", "3", "--n_val", "1", "--n_test", "1", "--audio", "tones"]) == 0
    assert len(list((out / "images").iterdir())) == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert demo.main(["--out", str(tmp_path / "other"), "--audio", "tones"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert demo.main(["--out", str(tmp_path / "x"), "--image_size", "16", "--audio", "tones"]) == 2
    assert "error: --image_size" in capsys.readouterr().err


def test_audio_mode_without_espeak(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng here
    assert demo.resolve_audio_mode("auto") == "tones"
    with pytest.raises(UserError, match="espeak-ng"):
        demo.resolve_audio_mode("speech")
