"""Retrieval recall against hand-built score matrices (rows = texts, columns = images)."""
import itertools
import math

import numpy as np
import pytest

from src.errors import UserError
from src.metrics.retrieval import chance_recall, chance_retrieval_recall, recall_at_k, retrieval_recall


def test_ir_and_tr_are_not_swapped_on_an_asymmetric_matrix():
    scores = np.array([[0.9, 0.1, 0.0],    # text 0 -> image 0 at rank 1
                       [0.8, 0.5, 0.0],    # text 1 -> image 1 at rank 2
                       [0.7, 0.6, 0.4]])   # text 2 -> image 2 at rank 3
    result = retrieval_recall(scores, [0, 1, 2], ks=(1, 2))
    # image -> text (columns): image 0 rank 1, image 1 rank 2 (text 2 scores 0.6 > 0.5), image 2 rank 1
    assert result["ir_r1"] == pytest.approx(100 / 3)
    assert result["ir_r2"] == pytest.approx(200 / 3)
    assert result["tr_r1"] == pytest.approx(200 / 3)
    assert result["tr_r2"] == pytest.approx(100.0)
    assert result["ir_mean"] == pytest.approx(50.0)
    assert result["tr_mean"] == pytest.approx(250 / 3)
    assert result["rsum"] == pytest.approx(100 / 3 + 200 / 3 + 200 / 3 + 100)
    assert result["r_mean"] == pytest.approx(result["rsum"] / 4)
    assert (result["n_texts"], result["n_images"]) == (3, 3)


def test_several_captions_per_image_and_sizes_that_divide_nothing():
    text_to_image = [0, 0, 1, 1, 1, 2, 2]   # 7 captions, 3 images
    scores = np.array([[0.9, 0.2, 0.1],    # img 0, rank 1
                       [0.3, 0.4, 0.5],    # img 0, rank 3
                       [0.1, 0.8, 0.2],    # img 1, rank 1
                       [0.6, 0.5, 0.1],    # img 1, rank 2
                       [0.2, 0.3, 0.4],    # img 1, rank 2
                       [0.5, 0.1, 0.7],    # img 2, rank 1
                       [0.2, 0.9, 0.3]])   # img 2, rank 2
    result = retrieval_recall(scores, text_to_image, ks=(1, 2, 3))
    assert result["ir_r1"] == pytest.approx(300 / 7)
    assert result["ir_r2"] == pytest.approx(600 / 7)
    assert result["ir_r3"] == pytest.approx(100.0)
    # image 0: best caption 0.9 -> rank 1; image 1: best caption 0.8, caption 6 (0.9) above -> rank 2;
    # image 2: best caption 0.7, nothing above -> rank 1
    assert result["tr_r1"] == pytest.approx(200 / 3)
    assert result["tr_r2"] == pytest.approx(100.0)
    assert (result["n_texts"], result["n_images"]) == (7, 3)


def test_constant_scores_give_zero_recall_until_k_reaches_the_candidate_count():
    result = retrieval_recall(np.zeros((4, 4)), [0, 1, 2, 3], ks=(1, 3, 4))
    assert [result[f"ir_r{k}"] for k in (1, 3, 4)] == [0.0, 0.0, 100.0]
    assert [result[f"tr_r{k}"] for k in (1, 3, 4)] == [0.0, 0.0, 100.0]


def test_constant_scores_with_multi_caption_images():
    # captions 0, 1 -> image 0, caption 2 -> image 1. IR rank = 2 for every caption.
    # TR: image 0 has one negative caption (rank 2), image 1 has two (rank 3).
    result = retrieval_recall(np.ones((3, 2)), [0, 0, 1], ks=(1, 2, 3))
    assert (result["ir_r1"], result["ir_r2"]) == (0.0, 100.0)
    assert (result["tr_r1"], result["tr_r2"], result["tr_r3"]) == (0.0, 50.0, 100.0)


def test_a_negative_tied_with_the_ground_truth_ranks_above_it():
    scores = np.array([[0.5, 0.5],   # text 0: image 1 ties with the ground truth -> rank 2
                       [0.1, 0.9]])
    result = retrieval_recall(scores, [0, 1], ks=(1,))
    assert result["ir_r1"] == 50.0


def test_rounding_noise_is_a_tie_but_a_real_gap_is_not():
    # two identical clips embedded in different batches: cosines 0.8 and 0.8 + 1e-7 (fp32 rounding)
    noisy = np.array([[0.8, np.float32(0.8) + np.float32(1e-7)], [0.8 + 1e-7, 0.8]], np.float32)
    assert recall_at_k(noisy, [{0}, {0}], ks=(1,)) == {"r1": 0.0}   # both orders rank the positive second
    gap = np.array([[0.8, 0.8 - 1e-4]], np.float32)
    assert recall_at_k(gap, [{0}], ks=(1,)) == {"r1": 100.0}


def test_positives_tied_with_each_other_do_not_push_each_other_down():
    scores = np.array([[0.7, 0.7, 0.2, 0.1]])
    assert recall_at_k(scores, [{0, 1}], ks=(1,)) == {"r1": 100.0}
    assert recall_at_k(scores, [{2, 3}], ks=(2, 3, 4)) == {"r2": 0.0, "r3": 100.0, "r4": 100.0}


def test_recall_at_k_for_any_pair_of_modalities():
    # e.g. text -> audio with 2 queries over 5 audio clips
    scores = np.array([[0.1, 0.9, 0.3, 0.2, 0.0],
                       [0.5, 0.4, 0.3, 0.2, 0.6]])
    assert recall_at_k(scores, [{2}, {1, 3}], ks=(1, 2, 3)) == pytest.approx({"r1": 0.0, "r2": 50.0, "r3": 100.0})


def test_many_rows_are_scored_in_chunks_like_one_block():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2500, 40)).astype(np.float32)
    text_to_image = np.arange(2500) % 40
    result = retrieval_recall(scores, text_to_image, ks=(1, 5))
    gt = scores[np.arange(2500), text_to_image]
    expected_ranks = (scores >= gt[:, None]).sum(axis=1)   # the ground truth itself counts once
    assert result["ir_r1"] == pytest.approx(100 * np.mean(expected_ranks <= 1))
    assert result["ir_r5"] == pytest.approx(100 * np.mean(expected_ranks <= 5))


def test_chance_recall_formula():
    assert chance_recall(10, 1, 1) == pytest.approx(10.0)
    assert chance_recall(10, 2, 1) == pytest.approx(20.0)
    assert chance_recall(10, 2, 2) == pytest.approx(100 * (1 - 28 / 45))
    assert chance_recall(5, 1, 10) == 100.0


def test_chance_recall_equals_the_average_over_all_orderings():
    n_candidates, positives, k = 6, {0, 1}, 2
    hits = [bool(positives & set(order[:k])) for order in itertools.permutations(range(n_candidates))]
    assert chance_recall(n_candidates, len(positives), k) == pytest.approx(100 * np.mean(hits))


def test_chance_row_has_the_same_keys_as_the_measured_row():
    text_to_image = [0, 0, 1, 2, 2, 2]
    chance = chance_retrieval_recall(text_to_image, 3, ks=(1, 5))
    assert chance.keys() == retrieval_recall(np.zeros((6, 3)), text_to_image, ks=(1, 5)).keys()
    assert chance["ir_r1"] == pytest.approx(100 / 3)
    expected_tr1 = (chance_recall(6, 2, 1) + chance_recall(6, 1, 1) + chance_recall(6, 3, 1)) / 3
    assert chance["tr_r1"] == pytest.approx(expected_tr1)
    assert chance["tr_r5"] == pytest.approx(100 * (1 - (0 + 1 / 6 + 0) / 3))
    assert math.isclose(chance["ir_r5"], 100.0)


@pytest.mark.parametrize("scores, text_to_image, message", [
    (np.zeros((3, 2)), [0, 1], "2 entries for 3 texts"),
    (np.zeros((2, 3)), [0, 1], "image 2"),
    (np.zeros((2, 2)), [0, 2], "outside"),
    (np.array([[0.0, np.nan], [0.0, 0.0]]), [0, 1], "NaN"),
    (np.zeros(3), [0], "2-D"),
])
def test_bad_inputs_are_user_errors(scores, text_to_image, message):
    with pytest.raises(UserError, match=message):
        retrieval_recall(scores, text_to_image)


def test_empty_positive_set_is_rejected():
    with pytest.raises(UserError, match="query 1 has no positive"):
        recall_at_k(np.zeros((2, 2)), [{0}, set()])
