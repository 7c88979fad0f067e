"""Cross-modal retrieval with an OPT model: tower embeddings, cross-encoder pair scores, shortlists, sharding, index.

Scoring modes (`MODES`):

* ``itc``: cosine of the contrastive embeddings of the single-modal towers (each item embedded once);
* ``itm``: the cross-encoder pair score over every (text, image) pair: pair_head logit "matched" minus "not matched"
  on the fused [text | image] sequence (the towers' token outputs are computed once per item and reused per pair);
* ``itc_itm``: per query, the top-k candidates by itc, re-ranked by the itm score; everything outside the shortlist
  scores -inf. Text queries (IR) and image queries (TR) have their own shortlists, so the two directions get their
  own score matrices.

Graph-mode Cells run with one fixed batch size: the last batch is filled up by repeating its last row and the filler
outputs are dropped. Work is split over ranks by `shard_positions` (rank r takes r::world); `gather_items` and
`gather_pair_scores` put the pieces back together on every rank (`gather` = all_gather_numpy, or a stand-in).
"""
import os

import mindspore as ms
import numpy as np
from mindspore import nn
from src.utils.progress import progress

from src.engine.distributed import all_gather_numpy
from src.errors import UserError
from src.utils.files import atomic_write

MODES = ("itc", "itm", "itc_itm")
INDEX_KEYS = ("features", "ids", "image_ids", "sources", "checkpoint")


class TextTower(nn.Cell):
    """(ids, mask) -> (token outputs, mask, normalised contrastive feature)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, ids, mask):
        tokens, token_mask = self.model.encode_text(ids, mask)
        return tokens, token_mask, self.model.text_features(tokens, token_mask)


class ImageTower(nn.Cell):
    """image (B, C, H, W) -> (token outputs, mask, normalised contrastive feature)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, image):
        tokens, token_mask = self.model.encode_image(image)
        return tokens, token_mask, self.model.image_features(tokens)


class AudioTower(nn.Cell):
    """(audio, frame_mask) -> normalised contrastive feature."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, audio, frame_mask):
        tokens, token_mask = self.model.encode_audio(audio, frame_mask)
        return self.model.audio_features(tokens, token_mask)


class PairScorer(nn.Cell):
    """Cross-encoder score of (text, image) pairs from the towers' token outputs (`OPTModel.pair_score`)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, text, text_mask, image, image_mask):
        return self.model.pair_score(text, text_mask, image, image_mask)


class RetrievalRunner:
    """The graph Cells of one model for retrieval, run with a fixed batch size. `towers` = (text, image, audio, pair)
    callables with the signatures of TextTower, ImageTower, AudioTower and PairScorer (e.g. exported graphs) replace
    the Cells of `model`."""

    def __init__(self, model, batch_size, towers=None):
        if batch_size < 1:
            raise UserError(f"retrieval batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        towers = towers or (TextTower(model), ImageTower(model), AudioTower(model), PairScorer(model))
        self.text_tower, self.image_tower, self.audio_tower, self.pair_scorer = towers

    def embed_texts(self, ids, mask, keep_tokens=True, desc="texts"):
        """ids, mask (n, L) -> {"features" (n, D)} plus "tokens" / "token_mask" when `keep_tokens`."""
        outputs = run_batched(self.text_tower, [ids, mask], self.batch_size, desc)
        result = {"features": outputs[2]}
        if keep_tokens:
            result.update(tokens=outputs[0], token_mask=outputs[1])
        return result

    def embed_image_batches(self, batches, keep_tokens=True, with_audio=False, desc="images"):
        """Batches of `build_eval_dataset` (dicts of numpy columns, any batch size) -> per row, concatenated:
        index, valid, features, (tokens, token_mask), (audio_features, has_audio: 1 when the item's clip exists). Rows
        are re-batched to the fixed size."""
        parts = {}
        for batch in progress(rebatch(batches, self.batch_size), desc=desc, leave=False):
            n = len(batch["index"])
            tokens, token_mask, features = self.image_tower(ms.Tensor(fill_batch(batch["image"], self.batch_size)))
            row = {"index": batch["index"], "valid": batch["valid"], "features": features.asnumpy()[:n]}
            if keep_tokens:
                row.update(tokens=tokens.asnumpy()[:n], token_mask=token_mask.asnumpy()[:n])
            if with_audio:
                audio = self.audio_tower(ms.Tensor(fill_batch(batch["audio"], self.batch_size)),
                                         ms.Tensor(fill_batch(batch["frame_mask"], self.batch_size)))
                row["audio_features"] = audio.asnumpy()[:n]
                # per item: whether its clip exists (any real frame); an absent clip's feature is no candidate
                row["has_audio"] = (np.asarray(batch["frame_mask"]).reshape(n, -1) > 0).any(1).astype(np.int32)
            for key, value in row.items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(value) for key, value in parts.items()}

    def score_pairs(self, texts, images, pairs, desc="pairs"):
        """Cross-encoder scores (P,) of `pairs` (P, 2) = (text row, image row) into the token outputs of `texts` and
        `images` (dicts from the embed methods)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) == 0:
            return np.zeros(0, np.float32)
        scores = []
        for start in progress(range(0, len(pairs), self.batch_size), desc=desc, leave=False):
            chunk = fill_batch(pairs[start:start + self.batch_size], self.batch_size)
            t, i = chunk[:, 0], chunk[:, 1]
            out = self.pair_scorer(ms.Tensor(texts["tokens"][t]), ms.Tensor(texts["token_mask"][t]),
                                   ms.Tensor(images["tokens"][i]), ms.Tensor(images["token_mask"][i]))
            scores.append(out.asnumpy()[: len(pairs) - start])
        return np.concatenate(scores).astype(np.float32)


def fill_batch(array, batch_size):
    """`array` (n <= batch_size, ...) with its last row repeated up to `batch_size` rows."""
    missing = batch_size - len(array)
    return array if missing == 0 else np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def rebatch(batches, batch_size):
    """Dicts of row-aligned arrays with any number of rows -> dicts of `batch_size` rows (the last may be short)."""
    pending, count = [], 0
    for batch in batches:
        pending.append(batch)
        count += len(next(iter(batch.values())))
        while count >= batch_size:
            merged = {key: np.concatenate([b[key] for b in pending]) for key in pending[0]}
            yield {key: value[:batch_size] for key, value in merged.items()}
            rest = {key: value[batch_size:] for key, value in merged.items()}
            count -= batch_size
            pending = [rest] if count else []
    if pending:
        yield {key: np.concatenate([b[key] for b in pending]) for key in pending[0]}


def run_batched(cell, arrays, batch_size, desc):
    """Call `cell` on fixed-size batches of the row-aligned `arrays`; its outputs, concatenated, filler rows dropped."""
    n = len(arrays[0])
    outputs = []
    for start in progress(range(0, n, batch_size), desc=desc, leave=False):
        inputs = [ms.Tensor(fill_batch(a[start:start + batch_size], batch_size)) for a in arrays]
        result = cell(*inputs)
        result = result if isinstance(result, tuple) else (result,)
        outputs.append([r.asnumpy()[: min(batch_size, n - start)] for r in result])
    return [np.concatenate(column) for column in zip(*outputs)]


# ------------------------------------------------------------------------------------------- scores and shortlists


def cosine_scores(queries, candidates):
    """Similarity matrix of normalised embeddings (n_queries, n_candidates), float32."""
    return np.asarray(queries, np.float32) @ np.asarray(candidates, np.float32).T


def top_k(scores, k):
    """Column indices of the k best scores of each row (n, min(k, n_columns)); ties keep the lower index first."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return order[:, :min(int(k), order.shape[1])]


def shortlist_mask(scores, k):
    """Boolean mask of the top-k entries of each row of `scores`."""
    mask = np.zeros(np.shape(scores), dtype=bool)
    np.put_along_axis(mask, top_k(scores, k), True, axis=1)
    return mask


def query_pairs(mode, itc, k, rank=0, world=1):
    """The (text, image) pairs rank `rank` scores with the cross-encoder, sorted and unique, int64 (P, 2).

    itm: every image for the text queries r::world. itc_itm: the itc top-k images of the text queries r::world and the
    itc top-k texts of the image queries r::world. `itc` is the (n_texts, n_images) itc score matrix.
    """
    n_texts, n_images = itc.shape
    texts = np.arange(rank, n_texts, world)
    if mode == "itm":
        t, i = np.meshgrid(texts, np.arange(n_images), indexing="ij")
        return np.stack([t.ravel(), i.ravel()], 1).astype(np.int64)
    if mode != "itc_itm":
        raise UserError(f"retrieval mode {mode!r} scores no pairs; choose itm or itc_itm")
    images = np.arange(rank, n_images, world)
    ir = top_k(itc[texts], k)
    tr = top_k(itc[:, images].T, k)
    pairs = np.concatenate([np.stack([np.repeat(texts, ir.shape[1]), ir.ravel()], 1),
                            np.stack([tr.ravel(), np.repeat(images, tr.shape[1])], 1)])
    return np.unique(pairs.astype(np.int64), axis=0)


def pair_matrix(pairs, scores, shape):
    """(n_texts, n_images) matrix holding `scores` at `pairs`, -inf elsewhere."""
    matrix = np.full(shape, -np.inf, dtype=np.float32)
    if len(pairs):
        matrix[pairs[:, 0], pairs[:, 1]] = scores
    return matrix


def mode_matrices(mode, itc, pairs=None, scores=None, k=None):
    """(IR matrix (n_texts, n_images) ranked per text, TR matrix (n_texts, n_images) ranked per image) of a mode,
    from the itc matrix and the cross-encoder `scores` of `pairs`."""
    if mode == "itc":
        return itc, itc
    full = pair_matrix(pairs, scores, itc.shape)
    if mode == "itm":
        if np.isinf(full).any():
            raise ValueError("itm mode needs a score for every (text, image) pair")
        return full, full
    return _rerank(itc, full, shortlist_mask(itc, k)), _rerank(itc, full, shortlist_mask(itc.T, k).T)


def _rerank(itc, full, keep):
    """Shortlisted entries keep their cross-encoder score; the others rank below every shortlisted one, in their itc
    order (as ALBEF does), so recall at K beyond the shortlist size stays meaningful."""
    if not keep.any():
        return itc
    offset = float(full[keep].min()) - float(itc.max()) - 1.0
    return np.where(keep, full, itc + offset).astype(np.float32)


# -------------------------------------------------------------------------------------------------- sharding


def shard_positions(n, rank, world):
    """Item positions rank `rank` of `world` handles (r::world), filled up to ceil(n / world) by repeating the last
    one so that every rank holds the same number of rows; (positions int64, valid int32)."""
    positions = np.arange(rank, n, world, dtype=np.int64)
    rows = -(-n // world)
    valid = np.zeros(rows, np.int32)
    valid[:len(positions)] = 1
    filler = positions[-1] if len(positions) else 0
    return np.concatenate([positions, np.full(rows - len(positions), filler, np.int64)]), valid


def gather_items(local, n, gather=all_gather_numpy):
    """Per-item arrays of every rank in item order. `local` holds "index" (R,), "valid" (R,) and row-aligned arrays,
    with the same R on every rank; returns {name: (n, ...)} for the other keys."""
    index = np.concatenate(gather(local["index"]))
    valid = np.concatenate(gather(local["valid"])).astype(bool)
    found = np.zeros(n, dtype=bool)
    found[index[valid]] = True
    if not found.all():
        raise ValueError(f"{int((~found).sum())} of {n} items were embedded by no rank")
    result = {}
    for key, value in local.items():
        if key in ("index", "valid"):
            continue
        rows = np.concatenate(gather(value))
        out = np.empty((n,) + rows.shape[1:], dtype=rows.dtype)
        out[index[valid]] = rows[valid]
        result[key] = out
    return result


def gather_pair_scores(pairs, scores, gather=all_gather_numpy):
    """Every rank's (pairs (P_r, 2), scores (P_r,)) merged: sorted unique pairs and their scores (P_r may differ
    between ranks; a pair two ranks both shortlisted, one for a text query and one for an image query, counts once)."""
    longest = int(max(np.concatenate(gather(np.array([len(pairs)], np.int64)))))
    padded_pairs = np.full((longest, 2), -1, np.int64)
    padded_pairs[:len(pairs)] = pairs
    padded_scores = np.zeros(longest, np.float32)
    padded_scores[:len(scores)] = scores
    all_pairs = np.concatenate(gather(padded_pairs))
    all_scores = np.concatenate(gather(padded_scores))
    real = all_pairs[:, 0] >= 0
    unique, first = np.unique(all_pairs[real], axis=0, return_index=True)
    return unique, all_scores[real][first]


# ------------------------------------------------------------------------------------------------------ index


def save_index(path, features, ids, image_ids, sources, checkpoint):
    """Write an image index (npz): normalised features (n, D), record ids, image ids, sources, the checkpoint."""
    with atomic_write(path, "wb") as stream:
        np.savez(stream, features=np.asarray(features, np.float32), ids=np.asarray(ids, dtype=str),
                 image_ids=np.asarray(image_ids, dtype=str), sources=np.asarray(sources, dtype=str),
                 checkpoint=np.asarray(str(checkpoint)))
    return path


def load_index(path):
    """Read an index written by `save_index`; UserError when it is missing or not an index."""
    if not os.path.isfile(path):
        raise UserError(f"retrieval index {path} not found; write one with eval.py --task retrieval --index_out FILE")
    try:
        with np.load(path, allow_pickle=False) as data:
            index = {key: data[key] for key in INDEX_KEYS}
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is not a retrieval index ({err}); rebuild it with --index_out") from None
    index["checkpoint"] = str(index["checkpoint"])
    return index


def search_index(index, query_features, top):
    """Best `top` images of the index for each query embedding: lists of dicts (rank, score, id, image_id, source)."""
    if query_features.shape[1] != index["features"].shape[1]:
        raise UserError(f"the index holds {index['features'].shape[1]}-d embeddings but the model makes "
                        f"{query_features.shape[1]}-d ones; use the checkpoint the index was built with "
                        f"({index['checkpoint']})")
    scores = cosine_scores(query_features, index["features"])
    results = []
    for row, best in zip(scores, top_k(scores, top)):
        results.append([{"rank": r + 1, "score": float(row[j]), "id": str(index["ids"][j]),
                         "image_id": str(index["image_ids"][j]), "source": str(index["sources"][j])}
                        for r, j in enumerate(best)])
    return results
