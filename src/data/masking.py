"""Per-sample masking, in-batch matching and decoder targets for the pre-training and generation tasks.

Every random choice draws from a numpy Generator; `sample_rng(seed, epoch, index)` gives each sample its own stream,
independent of rank and sharding, so a sample is masked the same way however the data is split.
"""

import numpy as np

from src.data.labels import (IMAGE_PAD_ID, IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_TOKEN_OFFSET, ITM_SAME_OTHER,
                             ITM_IMAGE_SWAPPED, ITM_AUDIO_SWAPPED, ITM_BOTH_DIFFERENT, ITM_CLASSES)
from src.errors import UserError

MASK_TOKEN_SHARE = 0.8  # BERT: of the chosen tokens, 80% become [MASK],
RANDOM_TOKEN_SHARE = 0.1  # 10% a random token, the rest stay unchanged


def sample_rng(seed, epoch, index):
    """Return the Generator for one sample in one epoch, seeded from (seed, epoch, index) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def _mask_count(available, prob, min_count, max_count=None):
    """How many of `available` items to mask: round(available * prob), clipped to [min_count, max_count]."""
    if available == 0:
        return 0
    count = max(min_count, int(available * prob + 0.5))
    if max_count is not None:
        count = min(count, max_count)
    return min(count, available)


def mask_tokens(ids, mask, rng, *, mask_id, vocab_size, special_ids, max_predictions, prob=0.15):
    """BERT masking of one token sequence.

    Chooses round(n * prob) of the n real, non-special tokens (at least one, at most `max_predictions`); each chosen
    token becomes [MASK] (80%), a random non-special id (10%) or stays (10%). Returns (input_ids int32 (L,),
    positions int32 (P,), labels int32 (P,), weights float32 (P,)); positions are ascending, unused slots hold
    position 0, label 0 and weight 0.
    """
    ids = np.asarray(ids, dtype=np.int32)
    special = np.asarray(sorted(set(int(s) for s in special_ids)), dtype=np.int32)
    candidates = np.flatnonzero(np.asarray(mask, dtype=bool) & ~np.isin(ids, special))
    count = _mask_count(len(candidates), prob, 1, max_predictions)
    chosen = np.sort(rng.choice(candidates, size=count, replace=False)) if count else candidates[:0]

    input_ids = ids.copy()
    action = rng.random(count)
    to_mask = chosen[action < MASK_TOKEN_SHARE]
    to_random = chosen[(action >= MASK_TOKEN_SHARE) & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)]
    input_ids[to_mask] = mask_id
    input_ids[to_random] = _random_regular_ids(len(to_random), vocab_size, special, rng)

    positions = np.zeros(max_predictions, dtype=np.int32)
    labels = np.zeros(max_predictions, dtype=np.int32)
    weights = np.zeros(max_predictions, dtype=np.float32)
    positions[:count] = chosen
    labels[:count] = ids[chosen]
    weights[:count] = 1.0
    return input_ids, positions, labels, weights


def _random_regular_ids(count, vocab_size, special, rng):
    """Draw `count` ids uniformly from [0, vocab_size) minus the special ids."""
    regular = vocab_size - int(np.count_nonzero(special < vocab_size))
    # The k-th regular id is k plus the number of special ids at or below it: walk the sorted specials upwards.
    drawn = rng.integers(0, regular, size=count).astype(np.int64)
    for special_id in special:
        drawn[drawn >= special_id] += 1
    return drawn.astype(np.int32)


def mask_positions(valid, rng, prob, min_count=1):
    """Choose round(n * prob) of the n valid positions (at least `min_count` when any is valid; prob 1.0 = all).

    Used for image patches (all valid) and audio tokens (only real ones). Returns float32 (N,), 1.0 where masked.
    """
    valid_positions = np.flatnonzero(np.asarray(valid, dtype=bool))
    count = _mask_count(len(valid_positions), prob, min_count)
    masked = np.zeros(np.shape(valid), dtype=np.float32)
    masked[rng.choice(valid_positions, size=count, replace=False)] = 1.0
    return masked


def mask_whole_text(ids, mask, mask_id):
    """Replace every real token between the leading [CLS] and the trailing [SEP] by [MASK] (int32 copy)."""
    ids = np.array(ids, dtype=np.int32)
    length = int(np.count_nonzero(mask))
    ids[1:max(length - 1, 1)] = mask_id
    return ids


def modality_schedule(rng, prob=0.15):
    """Draw (image_prob, audio_prob) for text decoding; 1.0 means the modality is fully masked.

    With p=0.3 the image is fully masked and the audio partly; p=0.3 the reverse; p=0.4 both partly (`prob`).
    """
    draw = rng.random()
    if draw < 0.3:
        return 1.0, prob
    if draw < 0.6:
        return prob, 1.0
    return prob, prob


def _other_index(index, batch_size, rng):
    """A batch index different from `index`, uniform over the others."""
    return (index + int(rng.integers(1, batch_size))) % batch_size


def itm_batch(batch_size, rng):
    """Draw in-batch three-modal matching: (labels int32 (B,), image_src int32 (B,), audio_src int32 (B,)).

    Labels are uniform over the five ITM_* classes; sample i uses the image of batch row image_src[i] and the audio
    of audio_src[i] (i itself when not swapped, never i when swapped, two different rows for ITM_BOTH_DIFFERENT).
    """
    if batch_size < 3:
        raise UserError(f"three-modal matching swaps images and audio inside a batch and needs a batch size of "
                        f"at least 3, got {batch_size}; raise the batch size")
    labels = rng.integers(0, ITM_CLASSES, size=batch_size).astype(np.int32)
    image_src = np.arange(batch_size, dtype=np.int32)
    audio_src = np.arange(batch_size, dtype=np.int32)
    for i, label in enumerate(labels):
        if label == ITM_SAME_OTHER:
            image_src[i] = audio_src[i] = _other_index(i, batch_size, rng)
        elif label == ITM_IMAGE_SWAPPED:
            image_src[i] = _other_index(i, batch_size, rng)
        elif label == ITM_AUDIO_SWAPPED:
            audio_src[i] = _other_index(i, batch_size, rng)
        elif label == ITM_BOTH_DIFFERENT:
            first, second = rng.choice(np.arange(1, batch_size), size=2, replace=False)
            image_src[i] = (i + first) % batch_size
            audio_src[i] = (i + second) % batch_size
    return labels, image_src, audio_src


def rank_rows(rank, world, per_rank):
    """Where rank `rank`'s batch rows sit in the global batch of `world` ranks with `per_rank` rows each, in the
    global batch's sample order (the order one process reads it in: row j of rank r is sample j * world + r, since
    rank r reads the epoch permutation's slice [r::world], see pretrain_data.epoch_indices)."""
    return np.arange(per_rank, dtype=np.int32) * world + rank


def gathered_rows(rows, world, per_rank):
    """Global-batch rows (sample order, as rank_rows) -> rows of the batch as an AllGather lays it out (rank 0's
    rows, then rank 1's, ...): sample j * world + r is row r * per_rank + j there."""
    rows = np.asarray(rows)
    return ((rows % world) * per_rank + rows // world).astype(np.int32)


def pair_match_batch(batch_size, rng, neg_prob=0.5):
    """Draw in-batch two-way matching: (labels int32 (B,) with 1 = matched and 0 = not, src int32 (B,)).

    Sample i is paired with batch row src[i]: i itself when matched, another row when not.
    """
    if batch_size < 2:
        raise UserError(f"pair matching swaps samples inside a batch and needs a batch size of at least 2, "
                        f"got {batch_size}; raise the batch size")
    negative = rng.random(batch_size) < neg_prob
    src = np.arange(batch_size, dtype=np.int32)
    for i in np.flatnonzero(negative):
        src[i] = _other_index(i, batch_size, rng)
    return (~negative).astype(np.int32), src


def _shifted_targets(tokens, bos_id, eos_id, pad_id, max_len):
    """Teacher-forcing arrays: input [BOS] t1..tn, target t1..tn [EOS], weights 1 on real target slots.

    The tokens are cut to max_len - 1 so that EOS always fits; the rest is padding with weight 0.
    """
    tokens = np.asarray(tokens, dtype=np.int32)[:max_len - 1]
    length = len(tokens) + 1
    decoder_input = np.full(max_len, pad_id, dtype=np.int32)
    target = np.full(max_len, pad_id, dtype=np.int32)
    weights = np.zeros(max_len, dtype=np.float32)
    decoder_input[0] = bos_id
    decoder_input[1:length] = tokens
    target[:length - 1] = tokens
    target[length - 1] = eos_id
    weights[:length] = 1.0
    return decoder_input, target, weights


def text_generation_targets(ids, mask, bos_id, eos_id, pad_id, max_len):
    """Caption-decoder arrays (decoder_input, target int32 (max_len,), weights float32 (max_len,)).

    `ids`/`mask` come from the tokenizer as [CLS] t [SEP]; the caption tokens t are framed as [BOS] t / t [EOS].
    """
    ids = np.asarray(ids, dtype=np.int32)
    real = ids[np.asarray(mask, dtype=bool)]
    tokens = real[(real != bos_id) & (real != eos_id)]
    return _shifted_targets(tokens, bos_id, eos_id, pad_id, max_len)


def image_token_targets(codes, codebook_size, max_len):
    """Image-decoder arrays from VQ codes (any shape, read row-major): codes become tokens code + 3, framed by BOS/EOS.

    Returns (decoder_input, target int32 (max_len,), weights float32 (max_len,)) like `text_generation_targets`.
    """
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise UserError(f"image token codes must lie in [0, {codebook_size}), got values from {codes.min()} to "
                        f"{codes.max()}; check that the image tokenizer's codebook size matches the config")
    return _shifted_targets(codes.astype(np.int32) + IMAGE_TOKEN_OFFSET, IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_PAD_ID,
                            max_len)
