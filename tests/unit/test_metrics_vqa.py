"""VQA normalisation, consensus accuracy and exact match on hand-computed examples."""
import pytest

from src.errors import UserError
from src.metrics.vqa import (confidence_accuracy, exact_match_accuracy, majority_baseline, normalize_answer,
                             remove_punctuation, vqa_metrics, vqa_v2_accuracy)
from src.data.converters.ofa_tsv import parse_answers


@pytest.mark.parametrize("raw, expected", [
    ("Yes!", "yes"),
    ("Two dogs.", "2 dogs"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("a man's hat", "man's hat"),
    ("The  ONE", "1"),
    ("none", "0"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("couldnt've", "couldn't've"),
    ("well", "well"),                         # an ordinary word is not taken for "we'll"
    ("black-and-white", "black and white"),   # a mark inside a word becomes a space
    ("t - shirt", "t shirt"),                 # a mark next to a space is dropped
    ("\tred\n", "red"),
])
def test_english_normalisation(raw, expected):
    assert normalize_answer(raw, "en") == expected


@pytest.mark.parametrize("raw, expected", [
    ("两个。", "2个"),
    ("三", "3"),
    ("十", "10"),
    ("零", "0"),
    ("有一只", "有1只"),
    ("十一", "十一"),          # only lone numerals 0-10 are converted
    ("“红色”！", "红色"),
    ("一 只 猫", "1只猫"),
    ("Ｔ恤", "t恤"),           # full-width letters folded and lower-cased
    ("（白色）", "白色"),
])
def test_chinese_normalisation(raw, expected):
    assert normalize_answer(raw, "zh") == expected


def test_remove_punctuation_covers_ascii_and_full_width():
    assert remove_punctuation("a,b。c？d“e”f!", " ") == "a b c d e f "


def test_vqa_accuracy_ten_answers_two_matching():
    answers = ["red", "red"] + ["blue"] * 8
    # leaving out a "red" (2 subsets): 1 match -> 1/3; leaving out a "blue" (8 subsets): 2 matches -> 2/3
    assert vqa_v2_accuracy("red", answers, "en") == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_v2_accuracy("red", answers, "en") == pytest.approx(0.6)


def test_vqa_accuracy_three_and_four_matching():
    three = ["yes"] * 3 + ["no"] * 7
    assert vqa_v2_accuracy("Yes.", three, "en") == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_v2_accuracy("yes", ["yes"] * 4 + ["no"] * 6, "en") == 1.0
    assert vqa_v2_accuracy("maybe", three, "en") == 0.0


def test_vqa_accuracy_with_few_answers():
    # 3 answers, 1 match: subsets without the match score 1/3 each (2 of them), the other scores 0
    assert vqa_v2_accuracy("猫", ["猫", "狗", "鸟"], "zh") == pytest.approx(2 / 9)
    assert vqa_v2_accuracy("两只", ["2只"], "zh") == 1.0   # a single answer is plain exact match
    assert vqa_v2_accuracy("三只", ["2只"], "zh") == 0.0


def test_exact_match_accuracy():
    preds = {"q1": "两个", "q2": "红色的", "q3": "Yes"}
    answers = {"q1": ["2个"], "q2": ["红色"], "q3": ["是", "yes"]}
    assert exact_match_accuracy(preds, answers, "zh") == pytest.approx(200 / 3)


def test_vqa_metrics_reports_consensus_accuracy_only_with_enough_answers():
    few = vqa_metrics({"q1": "猫", "q2": "狗"}, {"q1": ["猫"], "q2": ["猫", "狗"]}, "zh")
    assert few == {"exact_match": 100.0, "n_questions": 2}
    many = vqa_metrics({"a": "red", "b": "two"}, {"a": ["red", "red"] + ["blue"] * 8, "b": ["2", "3", "4"]}, "en")
    assert many["exact_match"] == 100.0
    assert many["vqa_accuracy"] == pytest.approx(100 * (0.6 + 2 / 9) / 2)


def test_confidence_accuracy_is_ofas_score():
    """OFA scores a VQA prediction with the confidence of the matching reference answer (0 if none): the answers
    column of its TSV, `1.0|!+two&&0.6|!+three&&0.3|!+3 people`."""
    answers, scores = parse_answers("0.3|!+3 people&&1.0|!+two&&0.6|!+three")
    assert confidence_accuracy("2", answers, scores, "en") == 1.0      # "two" normalises to "2"
    assert confidence_accuracy("Three.", answers, scores, "en") == 0.6
    assert confidence_accuracy("four", answers, scores, "en") == 0.0
    assert confidence_accuracy("3", ["3", "three"], [0.3, 0.6], "en") == 0.6  # matches both: the higher
    with pytest.raises(UserError, match="one per answer"):
        confidence_accuracy("x", ["x", "y"], [1.0], "en")


def test_vqa_metrics_reports_confidence_accuracy_next_to_vqa_accuracy():
    """Ten VQA v2 answers with OFA confidences (its VQA v2 TSVs derive them from the annotators' counts): both
    accuracies, each by its own formula; questions without scores do not count for the confidence accuracy."""
    ten = ["red"] * 2 + ["blue"] * 8
    preds = {"a": "red", "b": "green", "c": "cat"}
    answers = {"a": ten, "b": ten, "c": ["cat"]}
    scores = {"a": [0.6] * 2 + [1.0] * 8, "b": [0.6] * 2 + [1.0] * 8, "c": []}
    result = vqa_metrics(preds, answers, "en", scores)
    assert result["vqa_accuracy"] == pytest.approx(100 * (0.6 + 0 + 1) / 3)
    assert result["confidence_accuracy"] == pytest.approx(100 * (0.6 + 0) / 2)
    assert result["n_scored_questions"] == 2 and result["n_questions"] == 3
    assert "confidence_accuracy" not in vqa_metrics(preds, answers, "en")


def test_majority_baseline_predicts_the_most_frequent_training_answer():
    train = {"t1": ["是"], "t2": ["是。", "否"], "t3": ["两个"], "t4": ["2个"], "t5": ["2个"]}
    test = {"x": ["2个"], "y": ["是"], "z": ["3个"]}
    result = majority_baseline(train, test, "zh")
    assert result["answer"] == "2个"   # 3 counts after normalisation, "是" has 2
    assert result["exact_match"] == pytest.approx(100 / 3)


def test_mismatched_ids_and_bad_language_are_user_errors():
    with pytest.raises(UserError, match="1 without a prediction"):
        vqa_metrics({"a": "x"}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(UserError, match="unknown language"):
        normalize_answer("x", "fr")
    with pytest.raises(UserError, match="no ground-truth answer"):
        vqa_v2_accuracy("x", [])
