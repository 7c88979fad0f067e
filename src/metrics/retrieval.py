"""Recall@K for cross-modal retrieval (text-image, and the audio pairs), with pessimistic tie handling.

Naming follows UNITER/ALBEF: IR (image retrieval) = text -> image, TR (text retrieval) = image -> text.
All recalls are percentages.
"""
import math

import numpy as np

from src.errors import UserError

_ROW_CHUNK = 1024  # query rows scored at a time, bounds the memory of the boolean masks
# Scores this close count as ties. Identical items (two captions with the same text, two identical audio clips)
# embedded in different batches, or on different ranks of a distributed evaluation, get cosines that differ by
# fp32 rounding (~1e-7); without a tolerance that noise, not the model, would decide their order.
TIE_TOLERANCE = 1e-6


def recall_at_k(scores, positives, ks=(1, 5, 10)):
    """Percentage of queries with at least one positive candidate among their top K, for each K in ``ks``.

    ``scores`` is an (n_queries, n_candidates) matrix, higher = better; ``positives[q]`` is the set of candidate
    indices that are correct for query q (at least one). Ties are counted pessimistically: the rank of a query is
    1 + the number of NON-positive candidates whose score is >= the best positive's score - TIE_TOLERANCE, so a
    negative that ties with the ground truth ranks above it (a constant score matrix scores 0 unless K >= the number
    of candidates), and rounding noise cannot decide a tie.
    Returns ``{"r1": ..., "r5": ..., ...}`` keyed by ``f"r{k}"``.
    """
    ranks = _positive_ranks(scores, positives)
    return {f"r{k}": 100.0 * float(np.mean(ranks <= k)) for k in _check_ks(ks)}


def retrieval_recall(scores, text_to_image, ks=(1, 5, 10)):
    """Text-image retrieval recalls from an (n_texts, n_images) score matrix, higher = better.

    ``text_to_image[i]`` is the image index of caption i (an image may have several captions). IR: each caption
    is a query and hits if its image is in the top K. TR: each image is a query and hits if ANY of its captions is
    in the top K. Ties are pessimistic (see ``recall_at_k``). Works for any numbers of texts and images.
    Returns ``ir_r{k}``, ``tr_r{k}``, ``ir_mean``, ``tr_mean``, ``r_mean`` (mean of all), ``rsum`` (sum of all),
    ``n_texts`` and ``n_images``.
    """
    scores = _check_scores(scores)
    n_texts, n_images = scores.shape
    text_to_image = _check_text_to_image(text_to_image, n_texts, n_images)
    captions_of_image = _captions_per_image(text_to_image, n_images)
    ir = recall_at_k(scores, [{int(image)} for image in text_to_image], ks)
    tr = recall_at_k(scores.T, captions_of_image, ks)
    return _combine(ir, tr, n_texts, n_images)


def chance_recall(n_candidates, n_positives, k):
    """Expected Recall@K (percent) of a random ranking: P(at least one of n_positives lands in the top k)."""
    if n_candidates < 1 or not 1 <= n_positives <= n_candidates or k < 1:
        raise ValueError(f"need 1 <= n_positives <= n_candidates and k >= 1, got {n_positives}, {n_candidates}, {k}")
    k = min(k, n_candidates)
    miss = math.comb(n_candidates - n_positives, k) / math.comb(n_candidates, k)
    return 100.0 * (1.0 - miss)


def chance_retrieval_recall(text_to_image, n_images, ks=(1, 5, 10)):
    """The "chance" row matching ``retrieval_recall``: expected recalls of a random score matrix."""
    text_to_image = _check_text_to_image(text_to_image, len(text_to_image), n_images)
    n_texts = len(text_to_image)
    captions_of_image = _captions_per_image(text_to_image, n_images)
    ks = _check_ks(ks)
    ir = {f"r{k}": chance_recall(n_images, 1, k) for k in ks}
    tr = {f"r{k}": float(np.mean([chance_recall(n_texts, len(c), k) for c in captions_of_image])) for k in ks}
    return _combine(ir, tr, n_texts, n_images)


def _combine(ir, tr, n_texts, n_images):
    """Prefix the two directions and add the summary numbers."""
    result = {f"ir_{key}": value for key, value in ir.items()}
    result.update({f"tr_{key}": value for key, value in tr.items()})
    result["ir_mean"] = float(np.mean(list(ir.values())))
    result["tr_mean"] = float(np.mean(list(tr.values())))
    result["r_mean"] = float(np.mean(list(ir.values()) + list(tr.values())))
    result["rsum"] = float(sum(ir.values()) + sum(tr.values()))
    result["n_texts"] = n_texts
    result["n_images"] = n_images
    return result


def _positive_ranks(scores, positives):
    """Pessimistic 1-based rank of each query's best positive candidate."""
    scores = _check_scores(scores)
    n_queries, n_candidates = scores.shape
    if len(positives) != n_queries:
        raise UserError(f"retrieval: {len(positives)} positive sets for {n_queries} score rows; give one per query")
    ranks = np.empty(n_queries, dtype=np.int64)
    for start in range(0, n_queries, _ROW_CHUNK):
        block = scores[start:start + _ROW_CHUNK]
        is_positive = np.zeros(block.shape, dtype=bool)
        for row, candidates in enumerate(positives[start:start + _ROW_CHUNK]):
            indices = _check_positive_set(candidates, start + row, n_candidates)
            is_positive[row, indices] = True
        best_positive = np.where(is_positive, block, -np.inf).max(axis=1)
        ties_or_better = (block >= best_positive[:, None] - TIE_TOLERANCE) & ~is_positive
        ranks[start:start + len(block)] = 1 + ties_or_better.sum(axis=1)
    return ranks


def _check_scores(scores):
    scores = np.asarray(scores)
    if scores.ndim != 2 or 0 in scores.shape:
        raise UserError(f"retrieval: scores must be a non-empty 2-D (queries, candidates) matrix, got {scores.shape}")
    if np.isnan(scores).any():
        raise UserError("retrieval: scores contain NaN; check the model outputs before computing recall")
    return scores


def _check_ks(ks):
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise UserError(f"retrieval: ks must be positive integers, got {ks}")
    return ks


def _check_positive_set(candidates, query, n_candidates):
    indices = np.fromiter(candidates, dtype=np.int64)
    if indices.size == 0:
        raise UserError(f"retrieval: query {query} has no positive candidate; every query needs at least one")
    if indices.min() < 0 or indices.max() >= n_candidates:
        raise UserError(f"retrieval: query {query} has a positive index outside [0, {n_candidates})")
    return indices


def _check_text_to_image(text_to_image, n_texts, n_images):
    text_to_image = np.asarray(text_to_image, dtype=np.int64).reshape(-1)
    if len(text_to_image) != n_texts:
        raise UserError(f"retrieval: text_to_image has {len(text_to_image)} entries for {n_texts} texts")
    if n_texts and (text_to_image.min() < 0 or text_to_image.max() >= n_images):
        raise UserError(f"retrieval: text_to_image holds an image index outside [0, {n_images})")
    return text_to_image


def _captions_per_image(text_to_image, n_images):
    """For each image, the set of its caption indices; every image must have one."""
    captions = [set() for _ in range(n_images)]
    for text, image in enumerate(text_to_image):
        captions[int(image)].add(text)
    lonely = [image for image, texts in enumerate(captions) if not texts]
    if lonely:
        raise UserError(f"retrieval: image {lonely[0]} (and {len(lonely) - 1} more) has no caption; "
                        "drop caption-less images from the evaluation set")
    return captions
