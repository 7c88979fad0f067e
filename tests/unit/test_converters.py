"""Each converter on tiny files: the manifest it writes, a bad entry named in the error, and --skip_bad counting it."""

import base64
import io
import json
import os

import pytest
from PIL import Image

from src.data.converters.cli import main
from src.data.converters.ofa_tsv import parse_answers
from src.data.manifest import read_manifest

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "一", "只", "猫", "狗", "在", "跑"]


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_text(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def image_base64(color, image_format="PNG", urlsafe=False):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buffer, image_format)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(buffer.getvalue()).decode("ascii")


def convert(tmp_path, argv, skip_bad=False):
    """Run the CLI into tmp_path/out/m.jsonl; return (exit code, manifest samples or None)."""
    out = tmp_path / "out" / "m.jsonl"
    code = main(argv + ["--out", str(out)] + (["--skip_bad"] if skip_bad else []))
    return code, (read_manifest(str(out)) if code == 0 else None)


def assert_bad_entry(capsys, code, *fragments):
    """The run failed with exit code 2 and a one-line error naming the entry."""
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "--skip_bad" in err
    for fragment in fragments:
        assert fragment in err


def assert_skipped(tmp_path, capsys, count, fragment):
    out = capsys.readouterr().out
    assert f"skipped {count} bad entries" in out
    listed = (tmp_path / "out" / "m.jsonl.skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert len(listed) == count and fragment in listed[0]


# --- coco -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def coco_files(tmp_path):
    for name in ("COCO_1.jpg", "COCO_2.jpg"):
        touch(tmp_path / "images" / name)
    data = {
        "images": [{"id": 1, "file_name": "COCO_1.jpg"}, {"id": 2, "file_name": "COCO_2.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A dog. "},
            {"id": 11, "image_id": 2, "caption": "A cat."},
            {"id": 12, "image_id": 1, "caption": "Dog running."},
        ],
    }
    return data, ["coco", "--image_dir", str(tmp_path / "images")]


def test_coco_captions(tmp_path, coco_files, capsys):
    data, argv = coco_files
    code, samples = convert(tmp_path, argv + ["--captions", write_json(tmp_path / "caps.json", data)])
    assert code == 0
    assert [(s["id"], s["image"], s["captions"], s["image_id"], s["lang"]) for s in samples] == [
        ("COCO_1", "../images/COCO_1.jpg", ["A dog.", "Dog running."], "1", "en"),
        ("COCO_2", "../images/COCO_2.jpg", ["A cat."], "2", "en"),
    ]
    assert samples[0]["image_path"] == str(tmp_path / "images" / "COCO_1.jpg")
    assert "wrote 2 samples (2 images, 3 captions, 0 questions)" in capsys.readouterr().out


def test_coco_bad_annotation(tmp_path, coco_files, capsys):
    data, argv = coco_files
    data["annotations"].append({"id": 13, "image_id": 99, "caption": "lost"})
    argv = argv + ["--captions", write_json(tmp_path / "caps.json", data)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "caps.json annotation 13", "image_id 99")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and len(samples) == 2
    assert_skipped(tmp_path, capsys, 1, "annotation 13")


def test_coco_karpathy_splits(tmp_path, capsys):
    images = []
    for index, (folder, split) in enumerate([("train2014", "train"), ("val2014", "restval"), ("val2014", "test")]):
        name = f"COCO_{folder}_{index}.jpg"
        touch(tmp_path / "coco" / folder / name)
        sentences = [{"raw": f"caption {index}"}, {"raw": "more "}]
        images.append({"filepath": folder, "filename": name, "split": split, "cocoid": index, "sentences": sentences})
    images.append({"filepath": "val2014", "filename": "COCO_val2014_9.jpg", "split": "train", "sentences": []})
    path = write_json(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    argv = ["coco", "--karpathy", path, "--image_dir", str(tmp_path / "coco"), "--split", "train", "restval"]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "image COCO_val2014_9.jpg", "sentences")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0
    assert [(s["id"], s["image"], s["image_id"], s["captions"]) for s in samples] == [
        ("COCO_train2014_0", "../coco/train2014/COCO_train2014_0.jpg", "0", ["caption 0", "more"]),
        ("COCO_val2014_1", "../coco/val2014/COCO_val2014_1.jpg", "1", ["caption 1", "more"]),
    ]
    out = capsys.readouterr().out
    assert "1 images of other splits than train restval left out" in out and "skipped 1 bad entries" in out


# --- cn-captions ----------------------------------------------------------------------------------------------------


def test_cn_caption_lines(tmp_path, capsys):
    touch(tmp_path / "train2014" / "COCO_train2014_1.jpg")
    touch(tmp_path / "val2014" / "COCO_val2014_2.jpg")
    image_list = write_text(tmp_path / "train.txt", ["COCO_train2014_1", "COCO_val2014_2.jpg"])
    captions = write_text(
        tmp_path / "caps.txt",
        ["COCO_train2014_1#0\t一只猫", "COCO_val2014_2#0\t一只狗 ", "COCO_train2014_1#1\t猫在跑", "COCO_x#0\t其他"],
    )
    dirs = [str(tmp_path / "train2014"), str(tmp_path / "val2014")]
    argv = ["cn-captions", "--image_list", image_list, "--captions", captions, "--image_dir", *dirs]
    code, samples = convert(tmp_path, argv)
    assert code == 0
    assert [(s["id"], s["image"], s["captions"], s["lang"]) for s in samples] == [
        ("COCO_train2014_1", "../train2014/COCO_train2014_1.jpg", ["一只猫", "猫在跑"], "zh"),
        ("COCO_val2014_2", "../val2014/COCO_val2014_2.jpg", ["一只狗"], "zh"),
    ]
    assert "1 captions of images not in" in capsys.readouterr().out

    with open(captions, "a", encoding="utf-8") as f:
        f.write("COCO_train2014_1#2 no tab here\n")
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "caps.txt line 5", "image_name#k<TAB>caption")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and len(samples) == 2
    assert_skipped(tmp_path, capsys, 1, "line 5")


def test_cn_chinese_clip_jsonl_with_imgs_tsv(tmp_path, capsys):
    imgs = write_text(
        tmp_path / "test_imgs.tsv",
        [
            f"1000\t{image_base64('red', 'JPEG', urlsafe=True)}",
            f"1001\t{image_base64('blue')}",
            f"1002\t{image_base64('red')}",
        ],
    )
    texts = write_text(
        tmp_path / "test_texts.jsonl",
        [
            json.dumps({"text_id": 1, "text": "一只猫", "image_ids": [1000]}, ensure_ascii=False),
            json.dumps({"text_id": 2, "text": "猫在跑", "image_ids": [1000, 1001]}, ensure_ascii=False),
        ],
    )
    argv = ["cn-captions", "--texts_jsonl", texts, "--imgs_tsv", imgs, "--image_dir", str(tmp_path / "images")]
    code, samples = convert(tmp_path, argv)
    assert code == 0
    assert [(s["id"], s["image"], s["captions"]) for s in samples] == [
        ("1000", "../images/1000.jpg", ["一只猫", "猫在跑"]),
        ("1001", "../images/1001.png", ["猫在跑"]),
    ]
    with Image.open(tmp_path / "images" / "1000.jpg") as image:
        assert image.format == "JPEG" and image.size == (4, 3)
    assert "1 images of" in capsys.readouterr().out

    with open(texts, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text_id": 3, "text": "空", "image_id": 1000}) + "\n")
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "test_texts.jsonl line 3", "image_ids")
    assert convert(tmp_path, argv, skip_bad=True)[0] == 0
    assert_skipped(tmp_path, capsys, 1, "line 3")


def test_cn_chinese_clip_texts_without_image(tmp_path, capsys):
    """Chinese-CLIP test splits (e.g. MUGE test_texts.jsonl) hold texts with "image_ids": []: not an error, but
    left out and counted with their text_ids, since a sample is an image with its texts."""
    touch(tmp_path / "images" / "1000.jpg")
    texts = write_text(
        tmp_path / "test_texts.jsonl",
        [
            json.dumps({"text_id": 248816, "text": "一只猫", "image_ids": []}, ensure_ascii=False),
            json.dumps({"text_id": 248817, "text": "一只狗", "image_ids": [1000]}, ensure_ascii=False),
            json.dumps({"text_id": 248818, "text": "猫在跑", "image_ids": []}, ensure_ascii=False),
        ],
    )
    argv = ["cn-captions", "--texts_jsonl", texts, "--image_dir", str(tmp_path / "images")]
    code, samples = convert(tmp_path, argv)
    assert code == 0 and [(s["id"], s["captions"]) for s in samples] == [("1000", ["一只狗"])]
    out = capsys.readouterr().out
    assert '2 texts of' in out and '"image_ids": [] left out (text_id 248816, 248818)' in out
    assert not (tmp_path / "out" / "m.jsonl.skipped.tsv").exists()


def test_cn_chinese_clip_repeated_image_id(tmp_path, capsys):
    """Chinese-CLIP imgs.tsv (image_id<TAB>url-safe base64): a repeated image_id with the same image is written
    once and counted; with a different image it names the file, both lines and the id instead of replacing it."""
    red = image_base64("red", "JPEG", urlsafe=True)
    rows = [f"1000\t{red}", f"1001\t{image_base64('blue', urlsafe=True)}", f"1000\t{red}"]
    imgs = write_text(tmp_path / "valid_imgs.tsv", rows)
    texts = write_text(
        tmp_path / "valid_texts.jsonl",
        [
            json.dumps({"text_id": 1, "text": "一只猫", "image_ids": [1000]}, ensure_ascii=False),
            json.dumps({"text_id": 2, "text": "一只狗", "image_ids": [1001]}, ensure_ascii=False),
        ],
    )
    argv = ["cn-captions", "--texts_jsonl", texts, "--imgs_tsv", imgs, "--image_dir", str(tmp_path / "images")]
    code, samples = convert(tmp_path, argv)
    assert code == 0 and [(s["id"], s["captions"]) for s in samples] == [("1000", ["一只猫"]), ("1001", ["一只狗"])]
    assert "1 repeated lines of" in capsys.readouterr().out

    write_text(tmp_path / "valid_imgs.tsv", rows + [f"1000\t{image_base64('green', 'JPEG', urlsafe=True)}"])
    code = convert(tmp_path, argv)[0]
    assert_bad_entry(capsys, code, "valid_imgs.tsv line 4 (image_id '1000')", "also on line 1", "different image")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and [s["id"] for s in samples] == ["1001"]  # neither image of 1000 is trusted
    assert_skipped(tmp_path, capsys, 2, "line 4")
    assert not (tmp_path / "images" / "1000.jpg").exists()

    write_text(tmp_path / "valid_imgs.tsv", [f"a/b\t{red}", f"a_b\t{image_base64('blue', 'JPEG')}"])
    code = convert(tmp_path, argv)[0]
    err = capsys.readouterr().err
    assert code == 2 and "valid_imgs.tsv line 2 (image_id 'a_b')" in err and "'a/b' (line 1)" in err


# --- opt-textdb -----------------------------------------------------------------------------------------------------


@pytest.fixture
def opt_db(tmp_path):
    vocab = write_text(tmp_path / "vocab.txt", VOCAB)
    db = tmp_path / "txt"
    write_json(db / "meta.json", {"CLS": 2, "SEP": 3, "MASK": 4, "v_range": [5, 11]})
    write_json(db / "img_a.jpg1.json", {"input_ids": [7, 9, 10]})
    write_json(db / "img_a.jpg0.json", {"input_ids": [5, 6, 7]})
    write_json(tmp_path / "txt_json" / "sub" / "img_b.json", {"input_ids": [5, 6, 8]})  # the <db>_json fallback
    touch(tmp_path / "img" / "img_a.jpg")
    touch(tmp_path / "img" / "img_b.jpg")  # found by basename
    ids = ["img_a.jpg1", "img_a.jpg0", "sub/img_b"]
    argv = ["opt-textdb", "--txt_db", str(db), "--image_dir", str(tmp_path / "img"), "--vocab", vocab]
    return ids, argv


def test_opt_textdb(tmp_path, opt_db):
    ids, argv = opt_db
    code, samples = convert(tmp_path, argv + ["--ids", write_json(tmp_path / "ids.json", ids)])
    assert code == 0
    assert [(s["id"], s["image"], s["captions"]) for s in samples] == [
        ("img_a", "../img/img_a.jpg", ["一只猫", "猫在跑"]),
        ("sub/img_b", "../img/img_b.jpg", ["一只狗"]),
    ]


def test_opt_textdb_cc3m_cc12m_ids_and_unk(tmp_path, opt_db):
    """The original loader (data_three.py ImgData.get_image) opens cc3m / cc12m ids as they are (their own file
    names), without `.jpg`; an [UNK] token id stays visible in the decoded caption."""
    _, argv = opt_db
    db = tmp_path / "txt"
    write_json(db / "cc3m" / "training" / "1000001_2.json", {"input_ids": [5, 1, 7]})  # 一 [UNK] 猫
    write_json(db / "cc12m" / "00000" / "000000001.png.json", {"input_ids": [5, 6, 8]})
    touch(tmp_path / "img" / "cc3m" / "training" / "1000001_2")
    touch(tmp_path / "img" / "cc12m" / "00000" / "000000001.png")
    touch(tmp_path / "img" / "cc3m" / "training" / "1000001_2.jpg")  # must not be picked instead
    ids = ["cc3m/training/1000001_2", "cc12m/00000/000000001.png"]
    code, samples = convert(tmp_path, argv + ["--ids", write_json(tmp_path / "ids.json", ids)])
    assert code == 0
    assert [(s["id"], s["image"], s["captions"]) for s in samples] == [
        ("cc3m/training/1000001_2", "../img/cc3m/training/1000001_2", ["一[UNK]猫"]),
        ("cc12m/00000/000000001", "../img/cc12m/00000/000000001.png", ["一只狗"]),
    ]


def test_opt_textdb_bad_id(tmp_path, opt_db, capsys):
    ids, argv = opt_db
    argv = argv + ["--ids", write_json(tmp_path / "ids.json", ids + ["img_c.jpg0"])]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "ids.json id 'img_c.jpg0'", "img_c.jpg0.json not found")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and len(samples) == 2
    assert_skipped(tmp_path, capsys, 1, "img_c.jpg0")


def test_opt_textdb_vocab_must_match_meta(tmp_path, opt_db, capsys):
    ids, argv = opt_db
    write_json(tmp_path / "txt" / "meta.json", {"CLS": 101, "SEP": 102, "MASK": 103})
    code, _ = convert(tmp_path, argv + ["--ids", write_json(tmp_path / "ids.json", ids)])
    err = capsys.readouterr().err
    assert code == 2 and "meta.json: CLS is 101" in err


# --- fmiqa ----------------------------------------------------------------------------------------------------------


def test_fmiqa(tmp_path, capsys):
    touch(tmp_path / "mscoco" / "train2014" / "COCO_train2014_000000000042.jpg")
    touch(tmp_path / "mscoco" / "val2014" / "COCO_val2014_000000000007.jpg")
    items = [
        {"question_id": 1, "image_id": 42, "Question": "猫在哪?", "Answer": "在垫子上"},
        {"question_id": 2, "image_id": "7", "Question": "几只狗?", "Answer": "一只"},
    ]
    argv = ["fmiqa", "--split", "train", "--image_dir", str(tmp_path / "mscoco")]
    code, samples = convert(tmp_path, argv + ["--fmiqa", write_json(tmp_path / "FM-IQA.json", {"train": items})])
    assert code == 0
    assert [(s["id"], s["image"], s["image_id"], s["question"], s["answers"]) for s in samples] == [
        ("1", "../mscoco/train2014/COCO_train2014_000000000042.jpg", "42", "猫在哪?", ["在垫子上"]),
        ("2", "../mscoco/val2014/COCO_val2014_000000000007.jpg", "7", "几只狗?", ["一只"]),
    ]

    items.append({"question_id": 3, "image_id": 42, "Question": "什么?"})
    argv = argv + ["--fmiqa", write_json(tmp_path / "FM-IQA.json", {"train": items})]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "train[2] (question_id 3)", "Answer")
    assert convert(tmp_path, argv, skip_bad=True)[0] == 0
    assert_skipped(tmp_path, capsys, 1, "question_id 3")


# --- vqa2 -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def vqa_files(tmp_path):
    touch(tmp_path / "val2014" / "COCO_val2014_000000000005.jpg")
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 5, "question": "What color? ", "question_id": 50},
            {"image_id": 5, "question": "How many?", "question_id": 51},
        ],
    }
    answers = [f"red{i % 2}" for i in range(10)]
    annotations = {
        "annotations": [
            {"question_id": 50, "image_id": 5, "answers": [{"answer": a} for a in answers]},
            {"question_id": 51, "image_id": 5, "answers": [{"answer": "2", "answer_id": 1}]},
        ]
    }
    return questions, annotations, answers, ["vqa2", "--image_dir", str(tmp_path / "val2014")]


def test_vqa2(tmp_path, vqa_files):
    questions, annotations, answers, argv = vqa_files
    files = ["--questions", write_json(tmp_path / "q.json", questions)]
    code, samples = convert(tmp_path, argv + files + ["--annotations", write_json(tmp_path / "a.json", annotations)])
    assert code == 0
    assert [(s["id"], s["image"], s["image_id"], s["question"], s["answers"], s["lang"]) for s in samples] == [
        ("50", "../val2014/COCO_val2014_000000000005.jpg", "5", "What color?", answers, "en"),
        ("51", "../val2014/COCO_val2014_000000000005.jpg", "5", "How many?", ["2"], "en"),
    ]
    code, samples = convert(tmp_path, argv + files)  # a test split: no annotations, no answers
    assert code == 0 and [("answers" in s) for s in samples] == [False, False]


def test_vqa2_question_without_annotation(tmp_path, vqa_files, capsys):
    questions, annotations, _, argv = vqa_files
    annotations["annotations"].pop()
    argv = argv + ["--questions", write_json(tmp_path / "q.json", questions)]
    argv += ["--annotations", write_json(tmp_path / "a.json", annotations)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "q.json question [1] (question_id 51)", "no annotation")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and [s["id"] for s in samples] == ["50"]
    assert_skipped(tmp_path, capsys, 1, "question_id 51")


def test_vqa2_blank_answer_keeps_question(tmp_path, vqa_files, capsys):
    """VQA v2 annotations: 10 answers {answer, answer_confidence, answer_id}; one blank among them leaves the
    question with its 9 others and is counted, only a question with no non-blank answer is a bad entry."""
    questions, annotations, answers, argv = vqa_files
    given = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
    given[3]["answer"] = " "
    annotations["annotations"][0].update(answers=given, multiple_choice_answer="red0", answer_type="other")
    annotations["annotations"][1]["answers"] = [{"answer": "", "answer_confidence": "no", "answer_id": 1}]
    argv = argv + ["--questions", write_json(tmp_path / "q.json", questions)]
    argv += ["--annotations", write_json(tmp_path / "a.json", annotations)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "a.json annotation [1] (question_id 51)", "non-blank")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and [(s["id"], s["answers"]) for s in samples] == [("50", answers[:3] + answers[4:])]
    out = capsys.readouterr().out
    assert "1 blank answers of 1 questions in" in out and "skipped 2 bad entries" in out  # 51: annotation, question


def test_vqa2_test_dev_uses_test2015_images(tmp_path, capsys):
    """v2_OpenEnded_mscoco_test-dev2015_questions.json (data_subtype test-dev2015) asks about test2015 images, which
    are named COCO_test2015_<id>.jpg: there is no COCO_test-dev2015_ file."""
    touch(tmp_path / "test2015" / "COCO_test2015_000000000001.jpg")
    questions = {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
        "data_subtype": "test-dev2015",
        "questions": [{"image_id": 1, "question": "Is it raining?", "question_id": 10}],
    }
    path = write_json(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", questions)
    for subtype in ([], ["--data_subtype", "test-dev2015"]):
        argv = ["vqa2", "--questions", path, "--image_dir", str(tmp_path / "test2015")] + subtype
        code, samples = convert(tmp_path, argv)
        assert code == 0
        assert [(s["id"], s["image"], "answers" in s) for s in samples] == [
            ("10", "../test2015/COCO_test2015_000000000001.jpg", False)
        ]
        assert "test-dev2015 questions are about test2015 images" in capsys.readouterr().out


# --- ofa-tsv --------------------------------------------------------------------------------------------------------


def test_parse_answers():
    assert parse_answers("0.6|!+no&&1.0|!+yes") == (["yes", "no"], [1.0, 0.6])
    with pytest.raises(ValueError, match="not 'confidence"):
        parse_answers("yes")


def test_ofa_caption_tsv(tmp_path, capsys):
    red, blue = image_base64("red", "JPEG"), image_base64("blue", urlsafe=True)
    rows = [
        f"1\timg1\ta red picture\tsky&&wall\t{red}",
        f"2\timg2\ta blue one&&blue square\t\t{blue}",
        f"3\timg1\tred again\tsky\t{red}",
    ]
    argv = ["ofa-tsv", "--kind", "caption", "--image_dir", str(tmp_path / "images")]
    argv += ["--tsv", write_text(tmp_path / "caption_test.tsv", rows)]
    code, samples = convert(tmp_path, argv)
    assert code == 0
    assert [(s["id"], s["image"], s["captions"]) for s in samples] == [
        ("img1", "../images/img1.jpg", ["a red picture", "red again"]),
        ("img2", "../images/img2.png", ["a blue one", "blue square"]),
    ]
    assert sorted(os.listdir(tmp_path / "images")) == ["img1.jpg", "img2.png"]
    assert "2 images written" in capsys.readouterr().out

    with open(argv[-1], "a", encoding="utf-8") as f:
        f.write("4\timg3\tbroken\t\tnot-an-image!!\n")
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "caption_test.tsv line 4 (uniq_id '4')", "base64")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and len(samples) == 2
    assert_skipped(tmp_path, capsys, 1, "line 4")


def test_ofa_vqa_tsv(tmp_path, capsys):
    image = image_base64("green")
    rows = [
        f"79459\t7\tis this a cat?\t0.6|!+no&&1.0|!+yes\tcat&&sofa\t{image}",
        f"79460\t7\twhat color?\t1.0|!+green\t\t{image}",
        f"79461\t7\thow many?\tthree\t\t{image}",
    ]
    argv = ["ofa-tsv", "--kind", "vqa", "--image_dir", str(tmp_path / "images")]
    argv += ["--tsv", write_text(tmp_path / "vqa.tsv", rows)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "vqa.tsv line 3 (uniq_id '79461')", "confidence|!+answer")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0
    assert [(s["id"], s["image_id"], s["question"], s["answers"], s["answer_scores"]) for s in samples] == [
        ("79459", "7", "is this a cat?", ["yes", "no"], [1.0, 0.6]),
        ("79460", "7", "what color?", ["green"], [1.0]),
    ]
    assert samples[0]["image"] == samples[1]["image"] == "../images/7.png"
    assert_skipped(tmp_path, capsys, 1, "79461")


def test_repeated_ids_are_bad_entries(tmp_path, capsys):
    image = image_base64("green")
    rows = [f"1\t7\tq one?\t1.0|!+a\t\t{image}", f"1\t7\tq two?\t1.0|!+b\t\t{image}"]
    argv = ["ofa-tsv", "--kind", "vqa", "--image_dir", str(tmp_path / "images")]
    argv += ["--tsv", write_text(tmp_path / "vqa.tsv", rows)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "vqa.tsv line 2: id '1'", "from ", "vqa.tsv line 1;")
    code, samples = convert(tmp_path, argv, skip_bad=True)
    assert code == 0 and [s["question"] for s in samples] == ["q one?"] and "_source" not in samples[0]
    assert_skipped(tmp_path, capsys, 1, "vqa.tsv line 2: id '1'")


def test_repeated_ids_name_both_entries_vqa2(tmp_path, vqa_files, capsys):
    """VQA v2 questions: a question_id listed twice names both places of the questions file."""
    questions, _, _, argv = vqa_files
    questions["questions"].append({"image_id": 5, "question": "Again?", "question_id": 50})
    argv = argv + ["--questions", write_json(tmp_path / "q.json", questions)]
    assert_bad_entry(capsys, convert(tmp_path, argv)[0], "q.json question [2] (question_id 50): id '50'",
                     "q.json question [0] (question_id 50)")


def test_nothing_converted_is_an_error(tmp_path, capsys):
    argv = ["ofa-tsv", "--kind", "vqa", "--image_dir", str(tmp_path / "images")]
    argv += ["--tsv", write_text(tmp_path / "vqa.tsv", ["1\t7\tq?\tbad\t\tx"])]
    code, _ = convert(tmp_path, argv, skip_bad=True)
    assert code == 2 and "no samples converted" in capsys.readouterr().err
