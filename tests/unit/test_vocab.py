"""Vocabulary builder: specials first, order by count then alphabet, limits, file round trip and the CLI."""

import json
import random

import pytest

from src.data.tokenizer import Tokenizer
from src.data.vocab import SPECIAL_TOKENS, build_vocab, main, read_vocab, write_vocab
from src.errors import UserError

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_specials_first_then_by_count_then_alphabet():
    texts = ["b a a", "c B a", "猫 猫"]  # a:3, b:2, 猫:2, c:1
    assert list(SPECIAL_TOKENS) == SPECIALS
    assert build_vocab(texts) == SPECIALS + ["a", "b", "猫", "c"]


def test_deterministic_whatever_the_text_order():
    texts = ["一只小猫坐在垫子上", "a dog in the snow", "两只小狗", "The dog, the cat!"] * 3
    expected = build_vocab(texts)
    for seed in range(3):
        shuffled = texts[:]
        random.Random(seed).shuffle(shuffled)
        assert build_vocab(shuffled) == expected


def test_cjk_characters_words_and_punctuation_are_tokens():
    vocab = build_vocab(["小猫, Café!"])
    assert vocab[len(SPECIALS) :] == ["!", ",", "cafe", "小", "猫"]


def test_full_width_forms_stay_full_width():
    """The builder splits like the tokenizer (BERT's basic tokenizer): no NFKC folding of ， ！ Ａ ① ℃."""
    vocab = build_vocab(["老师，您好！ＡＢＣ①℃"])
    assert vocab[len(SPECIALS) :] == ["好", "师", "您", "老", "！", "，", "ａｂｃ①℃"]


def test_special_token_text_is_not_duplicated():
    vocab = build_vocab(["[MASK] x"])
    assert vocab == SPECIALS + ["[", "]", "mask", "x"]


def test_min_count_and_max_size():
    texts = ["b a a", "c b a", "猫 猫"]
    assert build_vocab(texts, min_count=2) == SPECIALS + ["a", "b", "猫"]
    assert build_vocab(texts, max_size=7) == SPECIALS + ["a", "b"]
    with pytest.raises(UserError, match="max_size 3"):
        build_vocab(texts, max_size=3)


def test_write_read_round_trip(tmp_path):
    tokens = SPECIALS + ["猫", "\u2028", "##s"]  # U+2028 is a real bert-base-chinese token
    path = tmp_path / "sub" / "vocab.txt"
    write_vocab(str(path), tokens)
    assert read_vocab(str(path)) == tokens
    assert path.read_bytes().count(b"\n") == len(tokens)


def test_read_rejects_empty_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("\n".join(SPECIALS[:2] + [""] + SPECIALS[2:]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 3: empty token"):
        read_vocab(str(path))


def test_cli_reads_captions_questions_and_answers(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    samples = [
        {"id": "1", "image": "1.jpg", "captions": ["小猫", "猫 dog"]},
        {"id": "2", "image": "2.jpg", "question": "几只猫?", "answers": ["两只", "两只"], "rationales": ["狗"]},
    ]
    manifest.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    out = tmp_path / "vocab.txt"
    assert main(["--manifest", str(manifest), "--out", str(out)]) == 0
    # counts: 猫 3, 两 2, 只 3, dog 1, 小 1, 几 1, ? 1; the rationale's 狗 only with --rationales
    assert read_vocab(str(out)) == SPECIALS + ["只", "猫", "两", "?", "dog", "几", "小"]
    assert "wrote 12 tokens" in capsys.readouterr().out
    assert main(["--manifest", str(manifest), "--out", str(out), "--rationales"]) == 0
    assert read_vocab(str(out)) == SPECIALS + ["只", "猫", "两", "?", "dog", "几", "小", "狗"]
    tokenizer = Tokenizer(str(out))
    assert tokenizer.unk_id not in tokenizer.encode("几只猫? 两只小猫 dog", 32).tolist()


def test_cli_error_is_one_line_and_code_2(tmp_path, capsys):
    assert main(["--manifest", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "v.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "absent.jsonl" in err and err.count("\n") == 1
