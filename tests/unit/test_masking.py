"""Masking statistics, determinism, in-batch matching constraints and decoder targets."""

import numpy as np
import pytest

from src.data.labels import (IMAGE_EOS_ID, IMAGE_TOKEN_OFFSET, ITM_AUDIO_SWAPPED, ITM_BOTH_DIFFERENT,
                             ITM_IMAGE_SWAPPED, ITM_MATCHED, ITM_SAME_OTHER, codes_from_tokens, image_vocab_size)
from src.data.masking import (gathered_rows, image_token_targets, itm_batch, mask_positions, mask_tokens,
                              mask_whole_text, modality_schedule, pair_match_batch, rank_rows, sample_rng,
                              text_generation_targets)
from src.errors import UserError

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 1000
REGULAR = np.setdiff1d(np.arange(VOCAB), SPECIALS)


def _sentence(rng, length, max_len):
    """[CLS] length regular tokens [SEP], padded with 0 to max_len; returns (ids, mask)."""
    ids = np.zeros(max_len, np.int32)
    ids[0], ids[length + 1] = CLS, SEP
    ids[1:length + 1] = rng.choice(REGULAR, size=length)
    mask = (np.arange(max_len) < length + 2).astype(np.int32)
    return ids, mask


def _mask(ids, mask, rng, max_predictions=20, prob=0.15, vocab=VOCAB, specials=SPECIALS):
    return mask_tokens(ids, mask, rng, mask_id=MASK, vocab_size=vocab, special_ids=specials,
                       max_predictions=max_predictions, prob=prob)


def test_sample_rng_depends_only_on_seed_epoch_index():
    draw = lambda *key: sample_rng(*key).integers(0, 2**31, size=4).tolist()  # noqa: E731
    assert draw(7, 2, 15) == draw(7, 2, 15)
    assert len({tuple(draw(*key)) for key in [(7, 2, 15), (8, 2, 15), (7, 3, 15), (7, 2, 16)]}) == 4
    ids, mask = _sentence(np.random.default_rng(0), 30, 40)
    first = _mask(ids, mask, sample_rng(1, 0, 5))
    again = _mask(ids, mask, sample_rng(1, 0, 5))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_mask_tokens_statistics_over_many_sentences():
    data_rng = np.random.default_rng(0)
    chosen = replaced_by_mask = replaced_randomly = kept = candidates = 0
    for index in range(1000):
        length = int(data_rng.integers(5, 36))
        ids, mask = _sentence(data_rng, length, 40)
        input_ids, positions, labels, weights = _mask(ids, mask, sample_rng(0, 0, index))
        count = int(weights.sum())
        real = positions[:count]
        candidates += length
        chosen += count
        assert count == max(1, int(length * 0.15 + 0.5))
        assert np.all(np.diff(real) > 0) and np.all((real >= 1) & (real <= length))
        np.testing.assert_array_equal(labels[:count], ids[real])
        assert np.all(positions[count:] == 0) and np.all(labels[count:] == 0) and np.all(weights[count:] == 0)
        untouched = np.setdiff1d(np.arange(40), real)
        np.testing.assert_array_equal(input_ids[untouched], ids[untouched])
        new = input_ids[real]
        replaced_by_mask += np.sum(new == MASK)
        kept += np.sum(new == ids[real])
        random_ids = new[(new != MASK) & (new != ids[real])]
        replaced_randomly += len(random_ids)
        assert not np.isin(random_ids, SPECIALS).any()
    assert candidates > 19000
    assert abs(chosen / candidates - 0.15) < 0.01
    assert abs(replaced_by_mask / chosen - 0.8) < 0.03
    # a random replacement equals the original with probability 1/995, so it is counted as kept
    assert abs(replaced_randomly / chosen - 0.1) < 0.025
    assert abs(kept / chosen - 0.1) < 0.025


def test_mask_tokens_limits_and_degenerate_inputs():
    rng = np.random.default_rng(1)
    ids, mask = _sentence(rng, 100, 110)
    assert _mask(ids, mask, rng, max_predictions=5)[3].sum() == 5
    ids, mask = _sentence(rng, 1, 8)
    input_ids, positions, labels, weights = _mask(ids, mask, rng, max_predictions=3)
    np.testing.assert_array_equal(weights, [1, 0, 0])
    assert positions[0] == 1 and labels[0] == ids[1]
    only_specials = np.array([CLS, SEP, PAD, PAD], np.int32)
    input_ids, positions, labels, weights = _mask(only_specials, [1, 1, 0, 0], rng, max_predictions=2)
    np.testing.assert_array_equal(input_ids, only_specials)
    assert weights.sum() == 0 and positions.sum() == 0 and labels.sum() == 0


def test_random_replacements_skip_every_special_id():
    # vocabulary of 8 with specials {0, 1, 2, 3, 5}: the only regular ids are 4, 6 and 7; every real token is 4
    ids, mask = np.array([1, 4, 4, 4, 4, 4, 4, 2], np.int32), np.ones(8, np.int32)
    seen = set()
    for index in range(400):
        input_ids, positions, _, weights = _mask(ids, mask, sample_rng(0, 0, index), max_predictions=6, prob=1.0,
                                                 vocab=8, specials=(0, 1, 2, 3, 5))
        assert weights.sum() == 6
        seen.update(int(i) for i in input_ids[positions] if i != MASK)
    assert seen == {4, 6, 7}


def test_mask_positions_counts():
    rng = np.random.default_rng(0)
    patches = mask_positions(np.ones(196), rng, 0.15)
    assert patches.dtype == np.float32 and patches.sum() == 29  # round(196 * 0.15 = 29.4)
    np.testing.assert_array_equal(mask_positions(np.ones(196), rng, 1.0), np.ones(196))
    valid = np.arange(25) < 10
    for _ in range(50):
        audio = mask_positions(valid, rng, 0.15)
        assert audio.sum() == 2 and audio[10:].sum() == 0  # round(1.5) = 2, only real tokens
    assert mask_positions(np.arange(8) < 3, rng, 0.15).sum() == 1  # round(0.45) = 0, raised to one
    assert mask_positions(np.arange(8) < 3, rng, 0.15, min_count=0).sum() == 0
    assert mask_positions(np.zeros(8), rng, 0.15).sum() == 0
    spread = sum(mask_positions(np.ones(10), sample_rng(0, 0, i), 0.1) for i in range(2000))
    assert spread.min() > 150 and spread.max() < 250  # each patch ~200 times


def test_mask_whole_text_keeps_cls_sep_and_padding():
    ids = np.array([CLS, 5, 6, 7, SEP, PAD, PAD])
    out = mask_whole_text(ids, [1, 1, 1, 1, 1, 0, 0], MASK)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [CLS, MASK, MASK, MASK, SEP, PAD, PAD])
    np.testing.assert_array_equal(mask_whole_text([CLS, SEP, PAD], [1, 1, 0], MASK), [CLS, SEP, PAD])


def test_modality_schedule_frequencies():
    draws = [modality_schedule(sample_rng(0, 0, i)) for i in range(10000)]
    share = {key: draws.count(key) / len(draws) for key in set(draws)}
    assert set(share) == {(1.0, 0.15), (0.15, 1.0), (0.15, 0.15)}
    assert abs(share[(1.0, 0.15)] - 0.3) < 0.02
    assert abs(share[(0.15, 1.0)] - 0.3) < 0.02
    assert abs(share[(0.15, 0.15)] - 0.4) < 0.02


def test_itm_batch_classes_and_sources():
    counts = np.zeros(5)
    for index in range(2000):
        labels, image_src, audio_src = itm_batch(8, sample_rng(0, 0, index))
        assert labels.dtype == image_src.dtype == audio_src.dtype == np.int32
        counts += np.bincount(labels, minlength=5)
        for i, (label, image, audio) in enumerate(zip(labels, image_src, audio_src)):
            assert 0 <= image < 8 and 0 <= audio < 8
            if label == ITM_SAME_OTHER:
                assert image == audio != i
            elif label == ITM_IMAGE_SWAPPED:
                assert image != i and audio == i
            elif label == ITM_AUDIO_SWAPPED:
                assert image == i and audio != i
            elif label == ITM_BOTH_DIFFERENT:
                assert image != i and audio != i and image != audio
            else:
                assert label == ITM_MATCHED and image == audio == i
    assert np.all(np.abs(counts / counts.sum() - 0.2) < 0.015)
    for index in range(200):  # the smallest batch still finds two different other samples
        labels, image_src, audio_src = itm_batch(3, sample_rng(1, 0, index))
        both = labels == ITM_BOTH_DIFFERENT
        assert np.all(image_src[both] != audio_src[both])
    with pytest.raises(UserError, match="at least 3"):
        itm_batch(2, np.random.default_rng(0))


def test_pair_match_batch():
    negatives = total = 0
    for index in range(1000):
        labels, src = pair_match_batch(6, sample_rng(0, 0, index), neg_prob=0.3)
        assert labels.dtype == src.dtype == np.int32
        np.testing.assert_array_equal(labels == 1, src == np.arange(6))
        negatives += np.sum(labels == 0)
        total += 6
    assert abs(negatives / total - 0.3) < 0.02
    with pytest.raises(UserError, match="at least 2"):
        pair_match_batch(1, np.random.default_rng(0))


def test_text_generation_targets():
    ids, mask = np.array([CLS, 7, 8, 9, SEP, PAD, PAD]), np.array([1, 1, 1, 1, 1, 0, 0])
    decoder_input, target, weights = text_generation_targets(ids, mask, CLS, SEP, PAD, 6)
    np.testing.assert_array_equal(decoder_input, [CLS, 7, 8, 9, PAD, PAD])
    np.testing.assert_array_equal(target, [7, 8, 9, SEP, PAD, PAD])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0, 0])
    assert decoder_input.dtype == target.dtype == np.int32 and weights.dtype == np.float32
    decoder_input, target, weights = text_generation_targets(ids, mask, CLS, SEP, PAD, 3)
    np.testing.assert_array_equal(decoder_input, [CLS, 7, 8])
    np.testing.assert_array_equal(target, [7, 8, SEP])
    np.testing.assert_array_equal(weights, [1, 1, 1])


def test_image_token_targets_round_trip():
    codes = np.array([[0, 5], [9, 2]])
    decoder_input, target, weights = image_token_targets(codes, codebook_size=10, max_len=6)
    np.testing.assert_array_equal(decoder_input, [1, 3, 8, 12, 5, 0])
    np.testing.assert_array_equal(target, [3, 8, 12, 5, IMAGE_EOS_ID, 0])
    np.testing.assert_array_equal(weights, [1, 1, 1, 1, 1, 0])
    assert target.max() < image_vocab_size(10) == 13 == 10 + IMAGE_TOKEN_OFFSET
    np.testing.assert_array_equal(codes_from_tokens(target), codes.reshape(-1))
    np.testing.assert_array_equal(codes_from_tokens(decoder_input), codes.reshape(-1))
    np.testing.assert_array_equal(codes_from_tokens([1, 4, 2, 7, 8]), [1])  # stops at EOS
    with pytest.raises(UserError, match=r"\[0, 10\)"):
        image_token_targets(np.array([3, 10]), codebook_size=10, max_len=6)


def test_global_batch_rows_by_hand():
    """Two ranks at batch 3 read samples [s0 s2 s4] and [s1 s3 s5] of a step; AllGather lays them out as
    s0 s2 s4 s1 s3 s5."""
    assert rank_rows(0, 2, 3).tolist() == [0, 2, 4]
    assert rank_rows(1, 2, 3).tolist() == [1, 3, 5]
    assert gathered_rows(np.arange(6), 2, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert gathered_rows([5, 2], 3, 2).tolist() == [5, 4]      # three ranks at batch 2: s5 on rank 2, s2 on rank 2
    assert gathered_rows([1, 4], 3, 2).tolist() == [2, 3]      # s1 is rank 1's first row, s4 its second
    assert rank_rows(0, 1, 4).tolist() == gathered_rows(np.arange(4), 1, 4).tolist() == [0, 1, 2, 3]
