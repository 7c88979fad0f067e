"""VQA answer normalisation, exact-match accuracy, VQA v2 (consensus) accuracy, OFA-style confidence accuracy and the
majority-answer baseline.

Accuracies returned by ``exact_match_accuracy``, ``vqa_metrics`` and ``majority_baseline`` are percentages; the
per-question ``vqa_v2_accuracy`` and ``confidence_accuracy`` are fractions in [0, 1].
"""
import re
import unicodedata
from collections import Counter

from src.errors import UserError
from src.metrics.ids import check_same_ids

LANGS = ("zh", "en")

# English normalisation follows the behaviour of the official VQA v2 evaluation: lower-case, punctuation
# removed or turned into spaces, number words 0-10 -> digits, articles dropped, apostrophe-less contractions restored.
_EN_PUNCTUATION = tuple(";/[]\"{}()=+\\_-><@`,?!")
_EN_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_EN_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_EN_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_EN_ARTICLES = {"a", "an", "the"}
# spellings that are ordinary words themselves and so are never rewritten ("well" is not "we'll")
_EN_ORDINARY_WORDS = {"id", "shed", "shell", "wed", "well", "were", "whore"}
_EN_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd she'd've she'll "
    "she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll we're we've weren't what'll what're "
    "what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't "
    "would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've").split()

# Chinese: numerals 0-10 written as a single character (not part of a longer numeral such as 十一) -> digits.
_ZH_NUMERALS = {"零": "0", "〇": "0", "一": "1", "二": "2", "两": "2", "三": "3", "四": "4", "五": "5",
                "六": "6", "七": "7", "八": "8", "九": "9", "十": "10"}
_ZH_NUMERAL_CLASS = "[" + "".join(_ZH_NUMERALS) + "]"
_ZH_LONE_NUMERAL = re.compile(f"(?<!{_ZH_NUMERAL_CLASS}){_ZH_NUMERAL_CLASS}(?!{_ZH_NUMERAL_CLASS})")


def _contraction_map():
    """Map each apostrophe-less spelling of a contraction (all or some apostrophes dropped) to its proper form."""
    mapping = {}
    for word in _EN_CONTRACTIONS:
        apostrophes = [i for i, char in enumerate(word) if char == "'"]
        spellings = [word.replace("'", "")] + [word[:position] + word[position + 1:] for position in apostrophes]
        mapping.update((spelling, word) for spelling in spellings if spelling not in _EN_ORDINARY_WORDS)
    return mapping


_EN_CONTRACTION_FIXES = _contraction_map()


def remove_punctuation(text, replacement=""):
    """Replace every Unicode punctuation character (ASCII and full-width, e.g. ，。？“”) with ``replacement``."""
    return "".join(replacement if unicodedata.category(char).startswith("P") else char for char in text)


def normalize_answer(answer, lang="zh"):
    """Canonical form of an answer for matching (see the module constants for the exact rules per language)."""
    _check_lang(lang)
    if lang == "en":
        return _normalize_en(answer)
    return _normalize_zh(answer)


def _normalize_en(answer):
    text = " ".join(answer.lower().split())
    has_digit_comma = _EN_DIGIT_COMMA_DIGIT.search(text) is not None
    original = text
    for mark in _EN_PUNCTUATION:   # a mark next to a space is dropped, one inside a word becomes a space
        glued = f"{mark} " not in original and f" {mark}" not in original and not has_digit_comma
        text = text.replace(mark, " " if glued else "")
    text = _EN_PERIOD_NOT_BEFORE_DIGIT.sub("", text)
    words = [_EN_NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(_EN_CONTRACTION_FIXES.get(word, word) for word in words if word not in _EN_ARTICLES)


def _normalize_zh(answer):
    text = unicodedata.normalize("NFKC", answer).lower()   # full-width letters/digits -> ASCII
    text = "".join(remove_punctuation(text).split())
    return _ZH_LONE_NUMERAL.sub(lambda match: _ZH_NUMERALS[match.group()], text)


def vqa_v2_accuracy(pred, gt_answers, lang="zh"):
    """VQA v2 consensus accuracy of one prediction, in [0, 1].

    With n >= 2 ground-truth answers: the mean over the n leave-one-out subsets of min(#matches in subset / 3, 1)
    (the official formula for n = 10, applied as-is for other n). With a single answer: exact match (0 or 1).
    Matching compares normalised strings.
    """
    if not gt_answers:
        raise UserError("vqa: a question has no ground-truth answer; every question needs at least one")
    target = normalize_answer(pred, lang)
    matches = [normalize_answer(answer, lang) == target for answer in gt_answers]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    return sum(min((total - left_out) / 3.0, 1.0) for left_out in matches) / len(matches)


def confidence_accuracy(pred, gt_answers, scores, lang="zh"):
    """OFA's VQA score of one prediction: the confidence of the ground-truth answer it matches (the highest, if it
    matches several after normalisation), 0 when it matches none. ``scores`` holds one confidence per answer (the
    `answer_scores` of OFA VQA files, e.g. ``1.0|!+yes&&0.6|!+no``)."""
    if len(scores) != len(gt_answers):
        raise UserError(f"vqa: {len(scores)} answer scores for {len(gt_answers)} answers; give one per answer")
    target = normalize_answer(pred, lang)
    return max((float(score) for answer, score in zip(gt_answers, scores) if normalize_answer(answer, lang) == target),
               default=0.0)


def _is_exact_match(pred, gt_answers, lang):
    target = normalize_answer(pred, lang)
    return any(normalize_answer(answer, lang) == target for answer in gt_answers)


def exact_match_accuracy(preds, answers, lang="zh"):
    """Percentage of questions whose normalised prediction equals any normalised ground-truth answer.

    ``preds``: {question id: answer}; ``answers``: {question id: [answers]}; both must cover the same ids.
    """
    _check_ids(preds, answers)
    return 100.0 * sum(_is_exact_match(preds[key], answers[key], lang) for key in answers) / len(answers)


def vqa_metrics(preds, answers, lang="zh", answer_scores=None):
    """``exact_match`` and ``vqa_accuracy`` (percent; the latter only when some question has >= 3 answers) and
    ``n_questions``, over the ids of ``answers`` (``preds`` must cover the same ids).

    ``answer_scores`` ({question id: [confidence per answer]}, e.g. from OFA VQA files) adds
    ``confidence_accuracy`` (percent, OFA's metric: the mean confidence of the predicted answers, 0 for an answer
    not among the references) over the questions that have scores, counted in ``n_scored_questions``.
    """
    _check_ids(preds, answers)
    result = {"exact_match": exact_match_accuracy(preds, answers, lang)}
    if any(len(gt) >= 3 for gt in answers.values()):
        scores = [vqa_v2_accuracy(preds[key], answers[key], lang) for key in answers]
        result["vqa_accuracy"] = 100.0 * sum(scores) / len(scores)
    scored = [key for key in answers if (answer_scores or {}).get(key)]
    if scored:
        values = [confidence_accuracy(preds[key], answers[key], answer_scores[key], lang) for key in scored]
        result["confidence_accuracy"] = 100.0 * sum(values) / len(values)
        result["n_scored_questions"] = len(scored)
    result["n_questions"] = len(answers)
    return result


def majority_baseline(train_answers, test_answers, lang="zh"):
    """Metrics of always predicting the most frequent normalised training answer (all answers of all questions
    counted; ties go to the answer seen first). Returns ``vqa_metrics`` plus ``"answer"``, the predicted answer."""
    counts = Counter(normalize_answer(answer, lang) for gt in train_answers.values() for answer in gt)
    if not counts:
        raise UserError("vqa: the training answers are empty; the majority baseline needs at least one answer")
    answer = counts.most_common(1)[0][0]
    result = vqa_metrics({key: answer for key in test_answers}, test_answers, lang)
    result["answer"] = answer
    return result


def _check_lang(lang):
    if lang not in LANGS:
        raise UserError(f"vqa: unknown language {lang!r}; use one of {', '.join(LANGS)}")


def _check_ids(preds, answers):
    if not answers:
        raise UserError("vqa: no ground-truth questions to evaluate")
    check_same_ids("vqa", preds, answers, "answers", "question")
