"""Tokenizer: ids against hand-checked values, round trips, truncation, padding, decoding and vocabulary errors."""

import os

import numpy as np
import pytest

from src.data.tokenizer import DEFAULT_VOCAB, Tokenizer, join_words
from src.errors import UserError

TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",  # 0-4
    "一", "只", "小", "猫", "坐", "在", "垫", "子", "上", "。",  # 5-14
    "a", "dog", "##s", "play", "##ing", "the", ",", "in", "snow", "!", "我",  # 15-25
]  # fmt: skip


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
    return Tokenizer(vocab_path)


def test_special_ids_and_size(tokenizer):
    assert tokenizer.vocab_size == 26
    specials = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    assert specials == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("一只小猫坐在垫子上。", [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 3]),
        ("Dogs playing in the snow!", [2, 16, 17, 18, 19, 22, 20, 23, 24, 3]),
        ("小狗 in the Snow, 我!", [2, 7, 1, 22, 20, 23, 21, 25, 24, 3]),  # 狗 is not in the vocabulary
    ],
)
def test_encode_hand_checked_ids(tokenizer, text, expected):
    ids = tokenizer.encode(text, max_len=32)
    assert ids.dtype == np.int32
    assert ids.tolist() == expected


def test_tokenize_splits_cjk_and_wordpieces(tokenizer):
    assert tokenizer.tokenize("Dogs 在 snow") == ["dog", "##s", "在", "snow"]
    assert tokenizer.tokenize("   ") == []
    assert tokenizer.encode("", 8).tolist() == [2, 3]


def test_round_trip_chinese_and_english(tokenizer):
    for text in ["一只小猫坐在垫子上。", "一只dog在snow上"]:
        assert tokenizer.decode(tokenizer.encode(text, 32)) == text
    english = tokenizer.decode(tokenizer.encode("Dogs playing in the snow!", 32))
    assert english == "dogs playing in the snow !"
    assert tokenizer.encode(english, 32).tolist() == tokenizer.encode("Dogs playing in the snow!", 32).tolist()


def test_truncation_keeps_cls_and_sep(tokenizer):
    assert tokenizer.encode("一只小猫坐在垫子上。", max_len=5).tolist() == [2, 5, 6, 7, 3]
    assert tokenizer.encode("一只小猫", max_len=2).tolist() == [2, 3]
    with pytest.raises(UserError, match="max_len 1"):
        tokenizer.encode("一只小猫", max_len=1)


def test_encode_padded_mask(tokenizer):
    ids, mask = tokenizer.encode_padded("Dogs playing in the snow!", 12)
    assert ids.tolist() == [2, 16, 17, 18, 19, 22, 20, 23, 24, 3, 0, 0]
    assert mask.tolist() == [1] * 10 + [0, 0]
    assert ids.dtype == mask.dtype == np.int32
    ids, mask = tokenizer.encode_padded("一只小猫坐在垫子上。", 4)
    assert ids.tolist() == [2, 5, 6, 3] and mask.tolist() == [1, 1, 1, 1]


def test_decode_stops_at_sep_skips_specials_merges_pieces(tokenizer):
    assert tokenizer.decode([2, 16, 17, 18, 19, 0, 24, 3, 8, 8]) == "dogs playing !"
    assert tokenizer.decode(np.array([2, 5, 1, 8, 4, 3], dtype=np.int32)) == "一猫"
    assert tokenizer.decode([17, 16]) == "s dog"  # a leading ## piece stands alone
    assert tokenizer.decode([0, 0, 7, 8]) == "小猫"  # [PAD] never ends the text
    with pytest.raises(ValueError, match="26"):
        tokenizer.decode([26])


def test_join_words_spacing():
    assert join_words(["a", "dog", "在", "垫", "snow", "。", "ok"]) == "a dog在垫snow。ok"
    assert join_words([]) == ""


def test_lower_case_false_keeps_case(vocab_path):
    assert Tokenizer(vocab_path, lower_case=False).tokenize("Dogs dog") == ["[UNK]", "dog"]


def test_vocab_without_specials_is_an_error(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n猫\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\[MASK\]"):
        Tokenizer(str(path))


def test_vocab_with_repeated_token_names_lines(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("\n".join(TOKENS + ["猫"]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 27.*line 9"):
        Tokenizer(str(path))


def test_missing_vocab_points_to_fetch_script(tmp_path):
    with pytest.raises(UserError, match="fetch_vocab.sh"):
        Tokenizer(str(tmp_path / "absent.txt"))


@pytest.mark.skipif(not os.path.isfile(DEFAULT_VOCAB), reason="run scripts/fetch_vocab.sh to fetch bert-base-chinese")
def test_bert_base_chinese_ids():
    tokenizer = Tokenizer(DEFAULT_VOCAB)
    assert tokenizer.vocab_size == 21128
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (
        0, 100, 101, 102, 103,
    )  # fmt: skip
    assert tokenizer.encode("一只小猫。", 16).tolist() == [101, 671, 1372, 2207, 4344, 511, 102]
