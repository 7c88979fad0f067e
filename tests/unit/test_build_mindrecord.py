"""build_mindrecord: validation and reject reasons, exact stored values, re-encoding, --strict, shards and workers."""
import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import mindspore.dataset as ds

from src.data.build_mindrecord import build_mindrecord, main, record_schema, summary_line, vocab_sha256
from demo.data import generate_demo
from src.data.manifest import read_manifest
from src.data.tokenizer import Tokenizer
from src.data.transforms import load_audio
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.errors import UserError
from tests.helpers import half_audio_manifest

N_GOOD = 24
EMPTY_ARRAYS = ("question_ids", "image_tokens")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """24 demo samples with tone audio, their vocabulary, and a manifest with one bad line of each kind appended."""
    root = tmp_path_factory.mktemp("build")
    generate_demo(root, N_GOOD, 0, 0, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, build_vocab(manifest_texts(read_manifest(root / "train.jsonl"))))
    jpeg = (root / "images" / "train_000000.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 20)
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "garbage.wav").write_bytes(os.urandom(300))
    good = (root / "train.jsonl").read_bytes().rstrip(b"\n").split(b"\n")

    def line(sample_id, **fields):
        sample = {"id": sample_id, "image": "images/train_000001.jpg", "captions": ["一个红色的圆"], **fields}
        return json.dumps(sample, ensure_ascii=False).encode()

    bad = [
        line("corrupt", image="corrupt.jpg"),                                   # line 25
        line("truncated", image="truncated.jpg"),                               # 26
        line("no_file", image="images/nowhere.jpg"),                            # 27
        line("no_audio", audio="audio/nowhere.wav"),                            # 28
        line("garbage_audio", audio="garbage.wav"),                             # 29
        line("blank", captions=["  "]),                                         # 30
        b'{"id": "latin1", "image": "images/train_000001.jpg", "text": "caf\xe9"}',  # 31
        b"this is not json",                                                    # 32
        good[3],                                                                # 33: repeats an id
    ]
    (root / "mixed.jsonl").write_bytes(b"\n".join(good + bad) + b"\n")
    return root, vocab


def read_rows(path, columns=None):
    data = ds.MindDataset(str(path), columns_list=columns, shuffle=False)
    rows = list(data.create_dict_iterator(num_epochs=1, output_numpy=True))
    return sorted(rows, key=lambda row: int(row["index"]))


def test_rejects_are_counted_per_reason_and_named_by_line(demo, tmp_path):
    root, vocab = demo
    out = tmp_path / "mixed.mindrecord"
    report = build_mindrecord(str(root / "mixed.jsonl"), str(out), vocab, workers=1)
    assert report["accepted"] == N_GOOD and report["rejected"] == 9 and report["written"]
    assert report["rejected_by_reason"] == {"bad_audio": 2, "bad_image": 2, "duplicate_id": 1, "empty_text": 1,
                                            "invalid_json": 1, "invalid_utf8": 1, "missing_image": 1}
    by_line = {entry["line"]: entry for entry in report["first_rejected"]}
    assert [(by_line[n]["id"], by_line[n]["reason"]) for n in range(25, 34)] == [
        ("corrupt", "bad_image"), ("truncated", "bad_image"), ("no_file", "missing_image"),
        ("no_audio", "bad_audio"), ("garbage_audio", "bad_audio"), ("blank", "empty_text"),
        (None, "invalid_utf8"), (None, "invalid_json"), ("train_000003", "duplicate_id")]
    assert "line 32: not valid JSON" in by_line[32]["message"]
    assert "line 31: not UTF-8" in by_line[31]["message"]
    assert "mixed.jsonl line 33: id 'train_000003' already used on line 4" in by_line[33]["message"]
    assert by_line[33]["first_line"] == 4 and "first_line" not in by_line[32]
    saved = json.loads((tmp_path / "mixed.mindrecord.report.json").read_text(encoding="utf-8"))
    assert saved["rejected_by_reason"] == report["rejected_by_reason"]
    assert saved["vocab_sha256"] == vocab_sha256(vocab) and saved["schema"] == record_schema(80)
    meta = json.loads((tmp_path / "mixed.mindrecord.meta.json").read_text(encoding="utf-8"))
    assert meta["count"] == N_GOOD and meta["files"] == ["mixed.mindrecord"]
    assert (meta["has_audio"], meta["audio_dim"], meta["has_vqa"], meta["has_image_tokens"]) == (True, 80, False, False)
    assert len(read_rows(out, ["index"])) == N_GOOD


def test_stored_values_equal_the_sources(demo, tmp_path):
    root, vocab = demo
    out = tmp_path / "train.mindrecord"
    build_mindrecord(str(root / "train.jsonl"), str(out), vocab, workers=1, max_frames=64)
    tokenizer = Tokenizer(vocab)
    samples = read_manifest(root / "train.jsonl")
    rows = read_rows(out)
    assert [int(row["index"]) for row in rows] == list(range(N_GOOD))
    for sample, row in zip(samples, rows):
        assert str(row["id"]) == sample["id"] and str(row["image_id"]) == sample["id"] and str(row["lang"]) == "zh"
        expected = [tokenizer.encode(caption, 512) for caption in sample["captions"]]
        np.testing.assert_array_equal(row["caption_ids"], np.concatenate(expected))
        np.testing.assert_array_equal(row["caption_lens"], [len(ids) for ids in expected])
        assert json.loads(str(row["captions"])) == sample["captions"]
        assert row["image"].reshape(-1)[0] == open(sample["image_path"], "rb").read()  # JPEG kept byte for byte
        frames, mask = load_audio(sample["audio_path"], 64)
        assert int(row["audio_frames"]) == mask.sum() > 0
        np.testing.assert_array_equal(row["audio"], frames[: mask.sum()])
        assert json.loads(str(row["answers"])) == []


def test_vqa_features_and_image_tokens(demo, tmp_path):
    """VQA questions are tokenised, .npy audio keeps its width, image-token grids are flattened."""
    root, vocab = demo
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a0.npy", rng.standard_normal((5, 20)).astype(np.float32))
    np.save(tmp_path / "a1.npy", rng.standard_normal((3, 7)).astype(np.float32))
    np.save(tmp_path / "codes.npy", np.arange(6).reshape(2, 3))
    image = str(root / "images" / "train_000002.jpg")
    lines = [
        {"id": "q0", "image_id": "img", "image": image, "question": "图中有几个圆？", "answers": ["1", "一"],
         "audio": "a0.npy", "image_tokens": "codes.npy"},
        {"id": "q1", "image_id": "img", "image": image, "question": "什么颜色？", "answers": ["红色"],
         "audio": "a1.npy"},
        {"id": "q2", "image_id": "img", "image": image, "question": "什么颜色？", "answers": [""]},
        {"id": "q3", "image_id": "img", "image": image, "question": "什么颜色？", "answers": ["红色"],
         "rationales": ["一个红色的圆", " "]},
    ]
    manifest = tmp_path / "vqa.jsonl"
    manifest.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in lines), encoding="utf-8")
    report = build_mindrecord(str(manifest), str(tmp_path / "vqa.mindrecord"), vocab, workers=1)
    assert report["rejected_by_reason"] == {"bad_audio": 1, "empty_text": 2}
    assert "width 7" in report["first_rejected"][0]["message"]
    blank = report["first_rejected"][2]["message"]
    assert "line 4" in blank and "blank rationale" in blank
    (row,) = read_rows(tmp_path / "vqa.mindrecord")
    np.testing.assert_array_equal(row["question_ids"], Tokenizer(vocab).encode("图中有几个圆？", 512))
    assert json.loads(str(row["answers"])) == ["1", "一"] and str(row["image_id"]) == "img"
    assert json.loads(str(row["rationales"])) == []
    np.testing.assert_array_equal(row["audio"], np.load(tmp_path / "a0.npy"))
    np.testing.assert_array_equal(row["image_tokens"], np.arange(6))
    meta = json.loads((tmp_path / "vqa.mindrecord.meta.json").read_text(encoding="utf-8"))
    flags = (meta["audio_dim"], meta["has_vqa"], meta["has_image_tokens"], meta["has_captions"],
             meta["has_rationales"])
    assert flags == (20, True, True, False, False)


def test_reencodes_other_formats_and_downscales(demo, tmp_path):
    root, vocab = demo
    pixels = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wide.bmp")
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    lines = [{"id": name, "image": f"wide.{name}", "text": "一个圆"} for name in ("bmp", "png")]
    manifest = tmp_path / "formats.jsonl"
    manifest.write_text("".join(json.dumps(s) + "\n" for s in lines), encoding="utf-8")

    def stored_images(image_size):
        build_mindrecord(str(manifest), str(tmp_path / "f.mindrecord"), vocab, workers=1, image_size=image_size)
        return [Image.open(io.BytesIO(row["image"].reshape(-1)[0])) for row in read_rows(tmp_path / "f.mindrecord")]

    bmp, png = stored_images(0)
    assert (bmp.format, bmp.size, png.format, png.size) == ("JPEG", (60, 40), "PNG", (60, 40))
    assert png.tobytes() == Image.fromarray(pixels).tobytes()
    bmp, png = stored_images(20)
    assert (bmp.format, bmp.size, png.format, png.size) == ("JPEG", (30, 20), "JPEG", (30, 20))


def test_strict_fails_and_writes_no_data(demo, tmp_path, capsys):
    root, vocab = demo
    out = tmp_path / "strict.mindrecord"
    code = main(["--manifest", str(root / "mixed.jsonl"), "--out", str(out), "--vocab", vocab, "--workers", "1",
                 "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --strict: 9 of 33 samples rejected")
    assert "line 25" in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["strict.mindrecord.report.json"]
    with pytest.raises(UserError, match="no sample"):
        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(b"not json\n")
        build_mindrecord(str(empty), str(tmp_path / "empty.mindrecord"), vocab, workers=1)


def test_ofa_answer_confidences_reach_the_mindrecord(demo, tmp_path):
    """An OFA VQA TSV row (uniq_id, image_id, question, `conf|!+answer&&...`, object labels, base64 image) converted
    to a manifest keeps its confidences in the MindRecord (`answer_scores`), read back by read_references."""
    from src.data.converters.cli import main as convert
    from src.data.pretrain_data import open_mindrecord, read_references
    root, vocab = demo
    image = base64.urlsafe_b64encode((root / "images" / "train_000001.jpg").read_bytes()).decode("ascii")
    rows = [f"79459\t7\twhat color is the circle?\t0.6|!+blue&&1.0|!+red\tcircle\t{image}",
            f"79460\t7\thow many circles?\t1.0|!+1\t\t{image}"]
    (tmp_path / "vqa.tsv").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    manifest = tmp_path / "vqa.jsonl"
    assert convert(["ofa-tsv", "--kind", "vqa", "--tsv", str(tmp_path / "vqa.tsv"), "--image_dir",
                    str(tmp_path / "images"), "--out", str(manifest), "--lang", "zh"]) == 0
    lines = manifest.read_text(encoding="utf-8").splitlines()
    negative = {**json.loads(lines[1]), "id": "negative", "answer_scores": [-1.0]}
    manifest.write_text("\n".join(lines + [json.dumps(negative)]) + "\n", encoding="utf-8")
    out = str(tmp_path / "vqa.mindrecord")
    report = build_mindrecord(str(manifest), out, vocab, workers=1)
    assert report["accepted"] == 2 and report["rejected_by_reason"] == {"invalid_sample": 1}
    assert "must be finite and >= 0" in report["first_rejected"][0]["message"]
    assert open_mindrecord(out, None).meta["has_answer_scores"] is True
    assert [(r["id"], r["answers"], r["answer_scores"]) for r in read_references(out)] == [
        ("79459", ["red", "blue"], [1.0, 0.6]), ("79460", ["1"], [1.0])]


def test_failed_rebuild_leaves_no_previous_mindrecord(demo, tmp_path, capsys):
    """A --strict rebuild that fails must not leave the earlier build's files to pass for the new manifest's."""
    root, vocab = demo
    out = tmp_path / "again.mindrecord"
    assert main(["--manifest", str(root / "train.jsonl"), "--out", str(out), "--vocab", vocab, "--workers", "1",
                 "--shards", "2", "--max_frames", "8"]) == 0
    assert (tmp_path / "again.mindrecord.meta.json").exists()
    capsys.readouterr()
    code = main(["--manifest", str(root / "mixed.jsonl"), "--out", str(out), "--vocab", vocab, "--workers", "1",
                 "--strict", "--max_frames", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "the previous MindRecord at" in err and "again.mindrecord0" in err and "removed" in err
    assert sorted(os.listdir(tmp_path)) == ["again.mindrecord.report.json"]
    report = json.loads((tmp_path / "again.mindrecord.report.json").read_text(encoding="utf-8"))
    assert report["written"] is False and report["rejected"] == 9
    assert report["removed_previous"] == ["again.mindrecord.meta.json", "again.mindrecord0", "again.mindrecord0.db",
                                          "again.mindrecord1", "again.mindrecord1.db"]


@pytest.mark.slow
def test_pool_workers_and_shards_give_the_same_records(demo, tmp_path):
    root, vocab = demo
    build_mindrecord(str(root / "train.jsonl"), str(tmp_path / "one.mindrecord"), vocab, workers=1, max_frames=32)
    code = main(["--manifest", str(root / "train.jsonl"), "--out", str(tmp_path / "two.mindrecord"), "--vocab", vocab,
                 "--workers", "2", "--shards", "2", "--max_frames", "32"])
    assert code == 0
    meta = json.loads((tmp_path / "two.mindrecord.meta.json").read_text(encoding="utf-8"))
    assert meta["files"] == ["two.mindrecord0", "two.mindrecord1"]
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
    one, two = read_rows(tmp_path / "one.mindrecord"), read_rows(tmp_path / "two.mindrecord0")
    assert len(one) == len(two) == N_GOOD
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            if a[key].ndim == 0 and key in EMPTY_ARRAYS:  # an empty array column reads back as a 0-d array
                assert b[key].ndim == 0
            else:
                np.testing.assert_array_equal(a[key], b[key])


def test_eleven_shards_or_more_are_numbered_as_file_writer_names_them(demo, tmp_path):
    """FileWriter zero-pads the shard suffix from 11 shards on (x00 ... x11); the meta must list those names."""
    root, vocab = demo
    assert main(["--manifest", str(root / "train.jsonl"), "--out", str(tmp_path / "s.mindrecord"), "--vocab", vocab,
                 "--workers", "1", "--shards", "12", "--max_frames", "32"]) == 0
    files = json.loads((tmp_path / "s.mindrecord.meta.json").read_text(encoding="utf-8"))["files"]
    assert files == [f"s.mindrecord{k:02d}" for k in range(12)]
    assert all((tmp_path / name).is_file() for name in files)


def _write_special_images(folder):
    """clear.png: RGBA, every pixel pink and fully transparent; turned.jpg: 64x32, left half red, right half blue,
    EXIF Orientation 6 (view rotated 90 degrees clockwise: red on top)."""
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = (255, 105, 180)
    Image.fromarray(rgba, "RGBA").save(folder / "clear.png")
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(folder / "turned.jpg", quality=95, exif=exif.tobytes())


def test_report_counts_composited_and_rotated_images(demo, tmp_path):
    root, vocab = demo
    _write_special_images(tmp_path)
    lines = [{"id": "clear", "image": "clear.png", "text": "一个圆"},
             {"id": "turned", "image": "turned.jpg", "text": "一个圆"},
             {"id": "plain", "image": str(root / "images" / "train_000001.jpg"), "text": "一个圆"}]
    manifest = tmp_path / "special.jsonl"
    manifest.write_text("".join(json.dumps(s) + "\n" for s in lines), encoding="utf-8")
    report = build_mindrecord(str(manifest), str(tmp_path / "s.mindrecord"), vocab, workers=1)
    assert report["images"]["composited"] == 1 and report["images"]["rotated"] == 1
    assert json.loads((tmp_path / "s.mindrecord.report.json").read_text())["images"] == report["images"]
    # downscaled images are re-encoded with the orientation applied and the transparency kept (the reader composites)
    build_mindrecord(str(manifest), str(tmp_path / "d.mindrecord"), vocab, workers=1, image_size=16)
    clear, turned, _ = [Image.open(io.BytesIO(row["image"].reshape(-1)[0]))
                        for row in read_rows(tmp_path / "d.mindrecord")]
    assert (clear.format, clear.mode, turned.format, turned.size) == ("PNG", "RGBA", "JPEG", (16, 32))
    turned = np.asarray(turned.convert("RGB"), np.int32)
    assert abs(turned[4, 8] - [255, 0, 0]).max() < 40 and abs(turned[28, 8] - [0, 0, 255]).max() < 40


def test_small_images_are_reported_as_upsampled_not_rejected(demo, tmp_path):
    root, vocab = demo
    for name, size in (("tiny", (20, 40)), ("edge", (32, 90)), ("big", (64, 64))):
        Image.fromarray(np.full(size + (3,), 128, np.uint8)).save(tmp_path / f"{name}.png")
    lines = [{"id": name, "image": f"{name}.png", "text": "一个圆"} for name in ("tiny", "edge", "big")]
    manifest = tmp_path / "small.jsonl"
    manifest.write_text("".join(json.dumps(s) + "\n" for s in lines), encoding="utf-8")
    report = build_mindrecord(str(manifest), str(tmp_path / "s.mindrecord"), vocab, workers=1, strict=True)
    assert report["accepted"] == 3 and report["rejected"] == 0 and report["written"]   # a warning, not a reject
    assert report["images"]["upsampled"] == 1 and report["images"]["first_upsampled"] == ["tiny"]  # 20 < 32 <= 32
    assert report["settings"]["min_image_size"] == 32
    report = build_mindrecord(str(manifest), str(tmp_path / "s.mindrecord"), vocab, workers=1, min_image_size=64)
    assert report["images"]["upsampled"] == 2 and report["images"]["first_upsampled"] == ["tiny", "edge"]
    assert main(["--manifest", str(manifest), "--out", str(tmp_path / "c.mindrecord"), "--vocab", vocab,
                 "--workers", "1", "--min_image_size", "0"]) == 0
    assert json.loads((tmp_path / "c.mindrecord.report.json").read_text())["images"]["upsampled"] == 0


def test_report_counts_unknown_tokens_and_long_texts(tmp_path):
    """Vocabulary: specials + 猫 狗 在 跑. "猫在跑" has 3 known tokens; "猫🦄跑" has 2 known and 1 [UNK]; the
    question "狗" x 60 is 62 long with [CLS] / [SEP], over --text_max_len 10; "猫在跑狗" is 6 long, within it;
    "猫" x 600 is over both --text_max_len and the stored limit (512)."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "猫", "狗", "在", "跑"]) + "\n",
                     encoding="utf-8")
    lines = [{"id": "known", "captions": ["猫在跑", "猫在跑狗"]},
             {"id": "unknown", "captions": ["猫🦄跑"]},
             {"id": "long", "question": "狗" * 60, "answers": ["狗"]},
             {"id": "huge", "captions": ["猫" * 600]}]
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in lines), encoding="utf-8")
    report = build_mindrecord(str(manifest), str(tmp_path / "t.mindrecord"), str(vocab), workers=1,
                              text_max_len=10)
    texts = report["texts"]
    assert (texts["count"], texts["tokens"], texts["unk_tokens"]) == (5, 3 + 4 + 3 + 60 + 600, 1)
    assert texts["unk_share"] == round(1 / 670, 6)
    assert (texts["with_unk"], texts["first_with_unk"]) == (1, ["unknown"])
    assert (texts["over_max_len"], texts["first_over_max_len"], texts["max_len"]) == (2, ["long", "huge"], 10)
    assert texts["cut_at_stored_limit"] == 1 and texts["stored_limit"] == 512   # 602 > 512: stored cut
    assert report["settings"]["text_max_len"] == 10
    assert "warnings: 1 texts with [UNK], 2 texts over 10 tokens;" in summary_line(report)


def test_samples_without_audio_are_stored_with_no_frame_and_counted(demo, tmp_path):
    """Per-sample audio presence: a record without a clip holds 0 frames (audio_frames 0); the meta's has_audio says
    some sample has audio and audio_samples how many."""
    root, vocab = demo
    kept = half_audio_manifest(root / "train.jsonl", root / "half.jsonl")  # next to the files it names
    out = tmp_path / "half.mindrecord"
    report = build_mindrecord(str(root / "half.jsonl"), str(out), vocab, workers=1)
    assert report["accepted"] == N_GOOD and report["audio_samples"] == len(kept) == N_GOOD // 2
    meta = json.loads((tmp_path / "half.mindrecord.meta.json").read_text(encoding="utf-8"))
    assert meta["has_audio"] is True and meta["audio_samples"] == N_GOOD // 2
    for row in read_rows(out, ["index", "audio", "audio_frames"]):
        has_clip = int(row["index"]) % 2 == 0  # manifest order: every second sample lost its clip
        assert (int(row["audio_frames"]) > 0) == has_clip and (has_clip or not row["audio"].any())
