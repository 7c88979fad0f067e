"""Caption metrics wiring on hand-checkable cases; only one test starts the (slow, ~10 s) METEOR Java process."""
import math
import shutil

import pytest

import src.metrics.caption as caption
from src.errors import UserError
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, write_vocab
from src.metrics.caption import caption_metrics, caption_words, tokenize_chinese
from src.utils.text import basic_tokenize, is_punctuation
from tests.unit.test_tokenizer import PARITY_SENTENCES, fuzz_sentences

HAS_JAVA = shutil.which("java") is not None
ZH_REFS = {"a": ["一只猫在沙发上睡觉"], "b": ["两个男人在公园里打网球"], "c": ["一辆红色的汽车停在路边"]}


@pytest.fixture
def no_java(monkeypatch):
    monkeypatch.setattr(caption.shutil, "which", lambda name: None)


def test_identical_captions_score_one_without_java(no_java, capsys):
    preds = {key: refs[0] + "。" for key, refs in ZH_REFS.items()}   # punctuation is ignored
    result = caption_metrics(preds, ZH_REFS, lang="zh")
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert result["rouge_l"] == pytest.approx(1.0)
    assert result["cider_d"] > 1.0
    assert result["skipped"] == ["METEOR"] and "meteor" not in result
    assert result["n_images"] == 3
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "java" in notice[0] and "METEOR" in notice[0]


def test_disjoint_captions_score_zero(no_java):
    preds = {"a": "蓝天白云", "b": "小狗吃饭", "c": "雪山高原"}
    result = caption_metrics(preds, ZH_REFS, lang="zh")
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"):
        assert result[name] == pytest.approx(0.0, abs=1e-6), name


def test_cider_identical_beats_disjoint(no_java):
    identical = caption_metrics({key: refs[0] for key, refs in ZH_REFS.items()}, ZH_REFS)["cider_d"]
    partial = caption_metrics({"a": "一只猫在睡觉", "b": "蓝天白云", "c": "雪山高原"}, ZH_REFS)["cider_d"]
    assert identical > partial > 0.0


def test_hand_computed_bleu(no_java):
    # hypothesis 4 chars, reference 6: 2 unigram matches, 1 bigram match (猫狗), brevity penalty exp(1 - 6/4)
    result = caption_metrics({"x": "猫狗鸟鱼"}, {"x": ["猫狗马牛羊鸡"]})
    penalty = math.exp(1 - 6 / 4)
    assert result["bleu1"] == pytest.approx(2 / 4 * penalty, rel=1e-6)
    assert result["bleu2"] == pytest.approx(math.sqrt(2 / 4 * 1 / 3) * penalty, rel=1e-6)
    assert result["cider_d"] == 0.0   # CIDEr-D takes its idf from the evaluated set: one image always scores 0


def test_chinese_char_and_space_modes(no_java):
    preds, refs = {"x": "一只 猫。"}, {"x": ["一只 狗"]}
    assert caption_metrics(preds, refs, zh_tokenize="char")["bleu1"] == pytest.approx(2 / 3, rel=1e-6)
    assert caption_metrics(preds, refs, zh_tokenize="space")["bleu1"] == pytest.approx(1 / 2, rel=1e-6)


def test_tokenize_chinese():
    assert tokenize_chinese("我看到T恤，和 abc12！") == ["我", "看", "到", "t", "恤", "和", "abc12"]
    assert tokenize_chinese("一只 小猫，在 睡觉。", "space") == ["一只", "小猫", "在", "睡觉"]
    # normalised as the tokenizer normalises: full-width forms kept (one word, as BERT splits them), accents stripped
    assert tokenize_chinese("ＡＢＣ１２３个，30℃！Café") == ["ａｂｃ１２３", "个", "30℃", "cafe"]
    assert tokenize_chinese("ＡＢＣ 小猫，Café", "space") == ["ａｂｃ", "小猫", "cafe"]


def test_caption_words_are_the_tokenizers_words_without_punctuation(tmp_path):
    corpus = PARITY_SENTENCES + fuzz_sentences(500, seed=2)
    for text in corpus:
        words = [word for word in basic_tokenize(text) if not (len(word) == 1 and is_punctuation(word))]
        assert caption_words(text) == tokenize_chinese(text) == words, repr(text)
    # end to end: with a vocabulary built from the texts, the tokenizer's pieces minus punctuation are the
    # metrics' words (words longer than the tokenizer's 100-character limit aside)
    vocab = tmp_path / "vocab.txt"
    write_vocab(str(vocab), build_vocab(corpus))
    tokenizer = Tokenizer(str(vocab))
    for text in corpus:
        pieces = [piece for piece in tokenizer.tokenize(text) if not (len(piece) == 1 and is_punctuation(piece))]
        words = [word if len(word) <= 100 else "[UNK]" for word in caption_words(text)]
        assert pieces == words, repr(text)


def test_english_without_java_falls_back_to_a_simple_split(no_java, capsys):
    refs = {"a": ["A dog is running on the grass."], "b": ["Two men play tennis in a park."]}
    preds = {"a": "a dog is running on the grass", "b": "two men, play tennis in a park!"}
    result = caption_metrics(preds, refs, lang="en")
    assert result["skipped"] == ["METEOR", "PTBTokenizer"]
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert result["rouge_l"] == pytest.approx(1.0)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not HAS_JAVA, reason="needs java for METEOR and the PTB tokenizer")
def test_english_with_java_runs_ptb_and_meteor(capsys):
    refs = {"a": ["A dog is running on the grass."], "b": ["Two men play tennis in a park."],
            "c": ["A red car parked by the road."]}
    preds = {"a": "A dog is running on the grass", "b": "Two men, playing tennis in a park", "c": "a cat"}
    result = caption_metrics(preds, refs, lang="en")
    assert result["skipped"] == []
    assert 0.0 < result["meteor"] < 1.0
    # PTB drops "," and "."; LCS: a = all 7 tokens, b = 6 of 7 ("playing" != "play"), c = 1 ("a") of 2 vs 7
    assert result["rouge_l"] == pytest.approx((1.0 + _rouge_l(6 / 7, 6 / 7) + _rouge_l(1 / 2, 1 / 7)) / 3)
    assert capsys.readouterr().err == ""


def _rouge_l(precision, recall, beta=1.2):
    """ROUGE-L F-measure as pycocoevalcap defines it (beta 1.2)."""
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


@pytest.mark.skipif(not HAS_JAVA, reason="needs java to start the METEOR process")
def test_a_failing_meteor_is_skipped_with_one_notice(monkeypatch, capsys):
    monkeypatch.setattr(caption.coco_meteor, "METEOR_JAR", "missing-meteor.jar")
    result = caption_metrics({key: refs[0] for key, refs in ZH_REFS.items()}, ZH_REFS)
    assert result["skipped"] == ["METEOR"] and "meteor" not in result
    assert result["bleu4"] == pytest.approx(1.0, abs=1e-6)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "METEOR" in notice[0] and "missing-meteor.jar" in notice[0]


@pytest.mark.skipif(not HAS_JAVA, reason="needs java to start the METEOR process")
def test_a_slow_meteor_is_killed_at_the_timeout(capsys):
    result = caption_metrics({key: refs[0] for key, refs in ZH_REFS.items()}, ZH_REFS, java_timeout=0.5)
    assert result["skipped"] == ["METEOR"]
    assert "timed out after" in capsys.readouterr().err


@pytest.mark.parametrize("preds, refs, kwargs, message", [
    ({"a": "x"}, {"a": ["x"], "b": ["y"]}, {}, "1 without a prediction"),
    ({"a": "x"}, {"a": []}, {}, "no reference caption"),
    ({"a": "x"}, {"a": ["x"]}, {"lang": "fr"}, "unknown language"),
    ({"a": "x"}, {"a": ["x"]}, {"zh_tokenize": "jieba"}, "unknown zh_tokenize"),
])
def test_bad_inputs_are_user_errors(preds, refs, kwargs, message):
    with pytest.raises(UserError, match=message):
        caption_metrics(preds, refs, **kwargs)
