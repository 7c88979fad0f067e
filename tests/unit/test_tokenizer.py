"""Tokenizer: parity with an independent BERT tokenizer, ids against hand-checked values, round trips, truncation,
padding, decoding and vocabulary errors."""

import os
import random
import sys
import unicodedata

import numpy as np
import pytest

from src.data.tokenizer import DEFAULT_VOCAB, MAX_WORD_CHARS, Tokenizer, join_words
from src.errors import UserError
from src.utils import text as text_rules

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
    assert english == "dogs playing in the snow!"
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


def test_decode_stops_at_sep_skips_cls_and_pad_shows_unk_merges_pieces(tokenizer):
    assert tokenizer.decode([2, 16, 17, 18, 19, 0, 24, 3, 8, 8]) == "dogs playing!"
    # [UNK] and [MASK] are shown, never silently dropped
    assert tokenizer.decode(np.array([2, 5, 1, 8, 4, 3], dtype=np.int32)) == "一[UNK]猫[MASK]"
    assert tokenizer.decode([17, 16]) == "s dog"  # a leading ## piece stands alone
    assert tokenizer.decode([0, 0, 7, 8]) == "小猫"  # [PAD] never ends the text
    with pytest.raises(ValueError, match="26"):
        tokenizer.decode([26])


def test_join_words_spacing():
    assert join_words(["a", "dog", "在", "垫", "snow", "。", "ok"]) == "a dog在垫snow。ok"
    assert join_words(["it", "'", "s", "(", "far", ")", ",", "ok", "!"]) == "it's (far), ok!"
    assert join_words(["老", "师", "，", "您", "好", "！", "[UNK]"]) == "老师，您好！[UNK]"
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


# ------------------------------------------------------------------ parity with an independent BERT implementation


def reference_basic_words(text, lower_case):
    """Google BERT's BasicTokenizer, written out rule by rule: clean, CJK split, lower + NFD + drop Mn, punctuation
    split, whitespace split."""
    def is_control(char):
        return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")

    def is_whitespace(char):
        return char in " \t\n\r" or unicodedata.category(char) == "Zs"

    def is_chinese(char):
        cp = ord(char)
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
                or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
                or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    def is_punctuation(char):
        cp = ord(char)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(char).startswith("P")

    cleaned = ""
    for char in text:
        if ord(char) == 0 or ord(char) == 0xFFFD or is_control(char):
            continue
        cleaned += " " if is_whitespace(char) else char
    spaced = "".join(f" {char} " if is_chinese(char) else char for char in cleaned)
    words = []
    for token in spaced.split():
        if lower_case:
            token = token.lower()
            token = "".join(char for char in unicodedata.normalize("NFD", token)
                            if unicodedata.category(char) != "Mn")
        current = ""
        for char in token:
            if is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return " ".join(words).split()


def reference_ids(text, vocab, lower_case):
    """Google BERT's FullTokenizer with max_input_chars_per_word=100: greedy longest-match-first WordPiece."""
    ids = []
    for word in reference_basic_words(text, lower_case):
        chars = list(word)
        if len(chars) > 100:
            ids.append(vocab["[UNK]"])
            continue
        pieces, start, bad = [], 0, False
        while start < len(chars):
            end, found = len(chars), None
            while start < end:
                piece = "".join(chars[start:end])
                if start > 0:
                    piece = "##" + piece
                if piece in vocab:
                    found = piece
                    break
                end -= 1
            if found is None:
                bad = True
                break
            pieces.append(vocab[found])
            start = end
        ids.extend([vocab["[UNK]"]] if bad else pieces)
    return ids


PARITY_TOKENS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *"老师您好我们说中文繁體字說話的是一个小猫坐在上图片里有大红色圆",  # simplified and traditional characters
    *"，。！？：；（）、“”《》…—～",  # full-width and CJK punctuation
    "the", "a", "dog", "##s", "play", "##ing", "cafe", "café", "naive", "resume", "un", "##aff", "##able", "hello",
    "world", "http", "##s", "www", "example", "com", "html", "index", *".,!?'-():/%&@#[]", "##a",
    "1", "##2", "##3", "2020", "3", "5", "km", "##m",
    "ａ", "##ｂ", "##ｃ", "##１", "##２", "##３", "①", "℃", "##℃", "°", "c",
    "こ", "##ん", "##に", "##ち", "##は", "カ", "##タ", "##ナ",
    "ᄒ", "##ᅡ", "##ᆫ", "##ᄀ", "##ᅮ", "##ᆨ",  # 한국 after NFD (Hangul syllables decompose into jamo)
    "σ", "ς", "##ς", "ο", "##δ", "##ο", "i", "ss", "ß", "ﬁ", "k",
    "😀", "𠀀", "b" * 101,   # a vocabulary token longer than 100 characters is still no word's id
]
PARITY_TOKENS = list(dict.fromkeys(PARITY_TOKENS))

PARITY_SENTENCES = [
    "老师，您好！", "我们说中文。你好吗？", "繁體中文字：說話的「人」。", "图片里有一个（大的）红色圆……",
    "ＡＢＣ１２３", "①②③ ℃ 30℃ ４５％", "Café, naïve résumé — déjà vu!", "CAFÉ Naïve RÉSUMÉ",
    "Dogs playing in the snow!", "unaffable UNAFFABLE", "It's 3.5km (2020).",
    "see http://www.example.com/index.html?a=1&b=2#top", "mail: a@b.com", "1231231 123 ¹²³",
    "😀 emoji 😀😀 a😀b 👍🏽 🇨🇳", "𠀀𠀁 ext-B 𪜀 𫝀 𫠠 𬺰 丽",
    "a" * 100, "a" * 101, "a" * 150 + " ok", "b" * 101, "b" * 100, "##a ##", "[CLS] [UNK] [MASK] [SEP] [PAD]",
    "tab\there\nnew\rline\x0bvt\x0cff\x1cfs\x85nel", "nul\x00byte\ufffdrepl \u200bzwsp\ufeffbom \u00adshy",
    "ctrl\x01\x02\x7f\x9f chars", "nbsp\u00a0ideo\u3000space\u2028line\u2029para\u2003em",
    "こんにちは カタカナ ﾊﾝｶｸ", "한국어 한국 안녕하세요", "ΣΑΣ ΟΔΟΣ σοφός ΑΣ中Σ Α.Σ", "İstanbul ŞIŞLI ß ﬁle K Å",
    "mixed中文English混合123数字", "e\u0301 a\u0300\u0301 \u0301alone", "x\u1fefy ;\u037e \u0387",
    "", "   ", "\u3000\n\t",
]


def fuzz_sentences(n, seed=0):
    """Random strings from a pool of characters where tokenizers differ: controls, spaces, marks, astral, cased."""
    pool = ("老师您好中文繁體，。！？（）「」ＡＢＣａｂｃ１２３①℃ abcXYZ019 .,!?'-_$^`|~+=<>"
            "\t\n\r\x00\x01\x1f\x7f\x85"
            "\u00a0\u2028\u3000\u200b\ufeff\ufffd\u0301\u0308\u0327\u20dd éÉñÑçÇåÅöÖİıßﬁΣσςΑΟΔ"
            "こんにちはカタカナﾊﾝｶｸ한국어한😀👍🏽𠀀𪜀丽\u1fef\u037e\u0387\u212a\u2126")
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def parity_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "vocab.txt"
    path.write_text("\n".join(PARITY_TOKENS) + "\n", encoding="utf-8")
    return str(path), {token: index for index, token in enumerate(PARITY_TOKENS)}


@pytest.mark.parametrize("lower_case", [True, False])
def test_ids_equal_an_independent_bert_tokenizer(parity_vocab, lower_case):
    path, vocab = parity_vocab
    tokenizer = Tokenizer(path, lower_case=lower_case)
    corpus = PARITY_SENTENCES + fuzz_sentences(3000)
    mismatches = [text for text in corpus if tokenizer.ids(text) != reference_ids(text, vocab, lower_case)]
    assert mismatches == []
    # the corpus exercises the vocabulary: most sentences have known pieces, continuation pieces are used
    pieces = [piece for text in PARITY_SENTENCES for piece in tokenizer.tokenize(text)]
    assert sum(piece != "[UNK]" for piece in pieces) > 0.6 * len(pieces)
    assert sum(piece.startswith("##") for piece in pieces) > 20


@pytest.mark.skipif(not os.path.isfile(DEFAULT_VOCAB), reason="run scripts/fetch_vocab.sh to fetch bert-base-chinese")
def test_ids_equal_an_independent_bert_tokenizer_on_bert_base_chinese():
    tokenizer = Tokenizer(DEFAULT_VOCAB)
    vocab = {token: index for index, token in enumerate(tokenizer.tokens)}
    corpus = PARITY_SENTENCES + fuzz_sentences(3000, seed=1)
    assert [text for text in corpus if tokenizer.ids(text) != reference_ids(text, vocab, True)] == []


def test_hand_computed_ids_keep_full_width_forms(parity_vocab):
    path, vocab = parity_vocab
    tokenizer = Tokenizer(path)
    ids = [vocab[token] for token in ["[CLS]", "老", "师", "，", "您", "好", "！", "[SEP]"]]
    assert tokenizer.encode("老师，您好！", 16).tolist() == ids          # ， and ！ keep their own ids
    assert vocab["，"] != vocab[","] and vocab["！"] != vocab["!"]
    assert tokenizer.tokenize("ＡＢＣ１２３") == ["ａ", "##ｂ", "##ｃ", "##１", "##２", "##３"]   # not abc ##123
    assert tokenizer.tokenize("① 30℃") == ["①", "[UNK]"]            # ① stays ①; 30℃ is one word, not in pieces
    assert tokenizer.tokenize("℃ ①℃") == ["℃", "①", "##℃"]
    assert tokenizer.tokenize("Café NAÏVE") == ["cafe", "naive"]       # lower-cased, accents stripped
    assert tokenizer.tokenize("a" * MAX_WORD_CHARS) == ["a"] + ["##a"] * (MAX_WORD_CHARS - 1)
    assert tokenizer.tokenize("a" * (MAX_WORD_CHARS + 1)) == ["[UNK]"]
    assert tokenizer.tokenize("[MASK]") == ["[", "[UNK]", "]"]        # text cannot write special tokens


def test_lower_case_false_keeps_case_and_accents(parity_vocab):
    tokenizer = Tokenizer(parity_vocab[0], lower_case=False)
    assert tokenizer.tokenize("café Café cafe\u0301") == ["café", "[UNK]", "[UNK]"]  # no NFD, no folding
    assert tokenizer.tokenize("老师，ＡＢＣ") == ["老", "师", "，", "[UNK]"]


@pytest.mark.skipif(not os.path.isfile(DEFAULT_VOCAB), reason="run scripts/fetch_vocab.sh to fetch bert-base-chinese")
def test_bert_base_chinese_hand_computed_ids_and_round_trip():
    tokenizer = Tokenizer(DEFAULT_VOCAB)
    # line numbers - 1 in bert-base-chinese's vocab.txt: 老 5439, 师 2360, ， 8024, 您 2644, 好 1962, ！ 8013
    # (MindSpore's NFKC folding gave , 117 and ! 106 instead)
    assert tokenizer.encode("老师，您好！", 16).tolist() == [101, 5439, 2360, 8024, 2644, 1962, 8013, 102]
    assert tokenizer.tokenize("ＡＢＣ１２３①℃") == ["ａ", "##ｂ", "##ｃ", "##１", "##２", "##３", "##①", "##℃"]
    for text in ["老师，您好！", "图中有几个圆？左边：红色；右边（蓝色）。"]:
        assert tokenizer.decode(tokenizer.encode(text, 64)) == text


def test_decode_round_trip_keeps_full_width_punctuation(parity_vocab):
    tokenizer = Tokenizer(parity_vocab[0])
    for text in ["老师，您好！", "图片里有一个（大的）红色圆。", "我们说中文：是的；好！"]:
        assert tokenizer.decode(tokenizer.encode(text, 64)) == text
    assert tokenizer.decode(tokenizer.encode("您好，😺老师", 64)) == "您好，[UNK]老师"   # unknown shown, not dropped


def test_text_rules_commute_and_cover_unicode():
    """What src/utils/text.py relies on: lower-casing and NFD keep CJK ideographs inside BERT's CJK ranges and bring
    nothing else into them, and the planes it does not scan hold no character it treats specially."""
    low, high = text_rules.SCANNED_PLANES
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if code not in low and code not in high:
            assert unicodedata.category(char) in ("Cn", "Co"), hex(code)
            continue
        folded = unicodedata.normalize("NFD", char.lower())
        if folded == char:
            continue
        cjk = text_rules.is_chinese_char(char)
        assert all(text_rules.is_chinese_char(c) == cjk for c in folded), hex(code)
