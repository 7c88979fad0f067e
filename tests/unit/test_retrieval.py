"""Retrieval: score matrices of the three modes, sharding and gathering, evaluation on a tiny model, the index and
fine-tuning."""
import math
import threading

import mindspore as ms
import numpy as np
import pytest

from src.config import load_config
from src.data.build_mindrecord import build_mindrecord
from demo.data import generate_demo
from src.data.manifest import read_manifest
from src.data.pretrain_data import build_pretrain_dataset
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.engine.optim import build_optimizer
from src.engine.train_step import LossScale, TrainStep
from src.evaluation.retrieval import audio_recalls, directional_recall, evaluate, query_index, table_rows
from src.inference.retrieval import (RetrievalRunner, gather_items, gather_pair_scores, load_index, mode_matrices,
                                     query_pairs, save_index, search_index, shard_positions, shortlist_mask)
from src.models.opt import build_model
from src.tasks.retrieval import RetrievalTask
from tests.helpers import ROOT, half_audio_manifest

N_TRAIN, N_TEST, B = 8, 7, 4  # 7 images x 5 captions: neither count is a multiple of the batch size

# Hand-built case: 5 captions of 3 images (image 0: captions 0, 1; image 1: caption 2; image 2: captions 3, 4).
TEXT_TO_IMAGE = np.array([0, 0, 1, 2, 2])
ITC = np.array([[0.9, 0.1, 0.0],
                [0.2, 0.8, 0.1],
                [0.5, 0.5, 0.0],   # a tie: the wrong image 0 counts as ranked above the right one
                [0.0, 0.3, 0.6],
                [0.1, 0.2, 0.05]], np.float32)
ITM = np.array([[1, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], np.float32)
ALL_PAIRS = np.array([(t, i) for t in range(5) for i in range(3)])


def _recalls(mode, k=None):
    pairs = None if mode == "itc" else query_pairs(mode, ITC, k)
    scores = None if pairs is None else ITM[pairs[:, 0], pairs[:, 1]]
    ir, tr = mode_matrices(mode, ITC, pairs, scores, k)
    result = directional_recall(ir, tr, TEXT_TO_IMAGE)
    return [round(result[key], 2) for key in ("ir_r1", "ir_r5", "tr_r1", "tr_r5")]


def test_recalls_of_each_mode_on_a_hand_built_case():
    # itc ranks of the right image per caption: 1, 2, 2 (tie), 1, 3; per image (best caption): 1, 2, 1
    assert _recalls("itc") == [40.0, 100.0, 66.67, 100.0]
    # itm: caption 1 prefers image 1 and ties image 0 with image 2 (rank 3); image 1 ranks caption 1 above its own
    assert _recalls("itm") == [80.0, 100.0, 66.67, 100.0]
    # itc_itm, k=1: captions keep only their itc top-1 image (caption 2's tie goes to the lower index, image 0);
    # images keep captions 0, 1 and 3 -> image 1 misses
    assert _recalls("itc_itm", 1) == [40.0, 100.0, 66.67, 100.0]
    assert query_pairs("itc_itm", ITC, 1).tolist() == [[0, 0], [1, 1], [2, 0], [3, 2], [4, 1]]
    # a shortlist covering every candidate in both directions re-ranks everything: exactly itm
    assert _recalls("itc_itm", 5) == _recalls("itm")
    assert query_pairs("itc_itm", ITC, 5).tolist() == ALL_PAIRS.tolist()


def test_itc_itm_ranks_the_rest_below_the_shortlist_in_itc_order():
    pairs = query_pairs("itc_itm", ITC, 2)
    ir, tr = mode_matrices("itc_itm", ITC, pairs, ITM[pairs[:, 0], pairs[:, 1]], 2)
    assert ir[1, :2].tolist() == [0.0, 2.0] and ir[1, 2] < 0.0   # caption 1: itc top-2 = images 1, 0, re-scored
    assert tr[[1, 3], 2].tolist() == [0.0, 1.0] and tr[[0, 2, 4], 2].max() < 0.0   # image 2: captions 3, 1
    for row, keep in ((ir, shortlist_mask(ITC, 2)), (tr.T, shortlist_mask(ITC.T, 2))):
        for scores, kept, itc in zip(row, keep, ITC if row is ir else ITC.T):
            assert scores[kept].min() > scores[~kept].max()
            rest = np.flatnonzero(~kept)
            assert np.argsort(-scores[rest], kind="stable").tolist() == np.argsort(-itc[rest], kind="stable").tolist()


def test_sharding_covers_every_query_once_and_gathers_back_in_order():
    assert [p.tolist() for p in shard_positions(5, 0, 2)] == [[0, 2, 4], [1, 1, 1]]
    assert [p.tolist() for p in shard_positions(5, 1, 2)] == [[1, 3, 3], [1, 1, 0]]
    for mode, k in (("itm", None), ("itc_itm", 1), ("itc_itm", 2)):
        union = np.unique(np.concatenate([query_pairs(mode, ITC, k, r, 3) for r in range(3)]), axis=0)
        assert union.tolist() == query_pairs(mode, ITC, k).tolist()
    # a stand-in collective: rank 0's call sees both ranks' arrays, in call order
    locals_ = []
    for rank in range(2):
        positions, valid = shard_positions(5, rank, 2)
        locals_.append({"index": positions, "valid": valid, "x": positions * 10.0})
    rank1 = iter([locals_[1]["index"], locals_[1]["valid"], locals_[1]["x"]])
    assert gather_items(locals_[0], 5, lambda a: [a, next(rank1)])["x"].tolist() == [0, 10, 20, 30, 40]
    answers = iter([np.array([1]), np.array([[4, 2]]), np.array([7.0], np.float32)])
    pairs, scores = gather_pair_scores(np.array([[0, 1], [3, 0]]), np.array([5.0, 6.0], np.float32),
                                       lambda a: [a, _pad_like(a, next(answers))])
    assert pairs.tolist() == [[0, 1], [3, 0], [4, 2]] and scores.tolist() == [5.0, 6.0, 7.0]
    # a pair both ranks shortlisted (rank 0 for its text query, rank 1 for its image query) is kept once, sorted
    answers = iter([np.array([2]), np.array([[3, 0], [1, 1]]), np.array([6.0, 8.0], np.float32)])
    pairs, scores = gather_pair_scores(np.array([[3, 0]]), np.array([6.0], np.float32), lambda a: [a, next(answers)])
    assert pairs.tolist() == [[1, 1], [3, 0]] and scores.tolist() == [8.0, 6.0]


def _pad_like(mine, theirs):
    """Rank 1's array padded as gather_pair_scores pads to the longest (its pairs with -1, scores with 0)."""
    if mine.shape == theirs.shape:
        return theirs
    out = np.full(mine.shape, -1 if mine.dtype == np.int64 else 0, mine.dtype)
    out[:len(theirs)] = theirs
    return out


# ----------------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    generate_demo(root, N_TRAIN, 0, N_TEST, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, build_vocab([t for n in ("train.jsonl", "test.jsonl")
                                    for t in manifest_texts(read_manifest(root / n))]))
    for split in ("train", "test"):
        build_mindrecord(str(root / f"{split}.jsonl"), str(root / f"{split}.mindrecord"), vocab, workers=1)
    tokenizer = Tokenizer(vocab)
    cfg = load_config(f"{ROOT}/config/retrieval/tiny.yaml", [
        f"data.vocab={vocab}", f"data.train={root / 'train.mindrecord'}", f"data.test={root / 'test.mindrecord'}",
        f"model.text.vocab_size={tokenizer.vocab_size}"])
    ms.set_seed(0)
    model = build_model(cfg.model)
    model.set_train(False)
    return {"cfg": cfg, "tokenizer": tokenizer, "model": model, "retriever": RetrievalRunner(model, B), "root": root}


def _evaluate(setup, mode, k=16, **kwargs):
    kwargs.setdefault("retriever", setup["retriever"])
    return evaluate(setup["model"], setup["cfg"], setup["tokenizer"], setup["cfg"].data.test, mode, k, **kwargs)


@pytest.mark.slow
def test_every_mode_on_a_tiny_model(setup):
    n_texts = N_TEST * 5
    itc, itm = _evaluate(setup, "itc"), _evaluate(setup, "itm")
    short, full = _evaluate(setup, "itc_itm", k=1), _evaluate(setup, "itc_itm", k=n_texts)
    assert (itc["n_texts"], itc["n_images"], itc["pairs_scored"]) == (n_texts, N_TEST, 0)
    assert itm["pairs_scored"] == n_texts * N_TEST
    assert full["text_image"] == itm["text_image"]  # k >= N: the re-ranking is the exhaustive cross-encoder
    assert full["pairs_scored"] == itm["pairs_scored"]  # ... on every pair once, though both directions shortlist it
    for result in (itc, itm, short):
        assert set(result["seconds"]) == set(result["cpu_seconds"])
        assert min(result["seconds"].values()) >= 0
    assert set(itc["seconds"]) == {"embed_texts", "embed_images", "rank"}
    assert set(itm["seconds"]) == {"embed_texts", "embed_images", "shortlist", "score", "rank"}
    # k = 1: the one finite candidate is the itc top-1, so R@1 is itc's, except where itc ties (identical captions
    # of two images): itc counts a tie as a miss, the shortlist keeps one of the tied candidates
    for key in ("ir_r1", "tr_r1"):
        assert short["text_image"][key] >= itc["text_image"][key]
    assert short["pairs_scored"] <= n_texts + N_TEST
    assert itc["chance"]["ir_r1"] == pytest.approx(100 / N_TEST)
    assert set(itc) >= {"text_audio", "image_audio"} and itc["text_audio"]["n_texts"] == n_texts


def test_embeddings_do_not_depend_on_the_batch_size(setup):
    ids, mask = (np.stack(c) for c in zip(*[setup["tokenizer"].encode_padded(t, 16)
                                            for t in ["一个红色的圆", "左边有一个蓝色的正方形", "中间", "右边", "圆"]]))
    by_4 = setup["retriever"].embed_texts(ids, mask)
    by_2 = RetrievalRunner(setup["model"], 2).embed_texts(ids, mask)
    for key in ("features", "tokens", "token_mask"):
        np.testing.assert_allclose(by_4[key], by_2[key], rtol=1e-5, atol=1e-6)
    assert by_4["features"].shape[0] == 5


@pytest.mark.slow
def test_pair_scores_do_not_depend_on_the_batch_or_its_filler_rows(setup):
    """Fixed-shape pair batches: the short last batch is filled with copies of its last pair and those are dropped;
    a pair's score is the same whatever batch it lands in, alone or repeated."""
    rng = np.random.default_rng(0)
    length, width = setup["cfg"].model.text.max_len, setup["cfg"].model.text.hidden
    image_tokens = setup["model"].image_encoder.num_tokens + 1
    texts = {"tokens": rng.standard_normal((3, length, width)).astype(np.float32),
             "token_mask": (np.arange(length) < np.array([[length], [3], [2]])).astype(np.int32)}
    images = {"tokens": rng.standard_normal((2, image_tokens, setup["cfg"].model.image.hidden)).astype(np.float32),
              "token_mask": np.ones((2, image_tokens), np.int32)}
    pairs = np.array([[0, 0], [0, 1], [1, 0], [2, 1], [1, 1], [2, 0], [0, 1]])  # 7 = 4 + a short batch of 3
    by_4 = setup["retriever"].score_pairs(texts, images, pairs)
    one_by_one = RetrievalRunner(setup["model"], 1)
    alone = np.concatenate([one_by_one.score_pairs(texts, images, pair[None]) for pair in pairs])
    assert by_4.shape == (7,) and by_4.dtype == np.float32
    np.testing.assert_allclose(by_4, alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_4[1], by_4[6], rtol=1e-6)   # the same pair in a full and in the filled batch
    assert np.ptp(by_4) > 1e-4   # the pairs are told apart
    assert setup["retriever"].score_pairs(texts, images, np.zeros((0, 2))).shape == (0,)


def test_index_round_trip(setup, tmp_path):
    result = _evaluate(setup, "itc", return_features=True)
    features = result["image_features"]
    path = save_index(str(tmp_path / "index.npz"), features, [f"id{i}" for i in range(N_TEST)],
                      [f"img{i}" for i in range(N_TEST)], [f"src{i}" for i in range(N_TEST)], "ckpt")
    index = load_index(path)
    np.testing.assert_array_equal(index["features"], features)
    assert index["checkpoint"] == "ckpt" and index["ids"].tolist()[2] == "id2"
    hits = query_index(setup["model"], setup["cfg"], setup["tokenizer"], path, "一只红色的圆", top=3)
    ids, mask = setup["tokenizer"].encode_padded("一只红色的圆", 16)
    query = setup["retriever"].embed_texts(ids[None], mask[None])["features"][0]
    expected = np.argsort(-(features @ query), kind="stable")[:3]
    assert [h["id"] for h in hits] == [f"id{i}" for i in expected]
    np.testing.assert_allclose([h["score"] for h in hits], (features @ query)[expected], rtol=1e-4, atol=1e-5)
    assert search_index(index, query[None], 1)[0][0]["source"] == f"src{expected[0]}"


class _Locked:
    """A RetrievalRunner's methods one call at a time, for two "ranks" sharing a process as threads. MindSpore's dataset
    engine is not thread-safe either: building one rank's pipeline while the other rank iterates its own deadlocked
    once (a ConcatDataset's iterator clean-up waiting on the other thread's iterator), so `locked_pipelines` puts
    building a pipeline and starting its iterator under the same lock."""

    lock = threading.Lock()

    @classmethod
    def locked_pipelines(cls, monkeypatch):
        import src.data.pretrain_data as pipeline
        build = pipeline.build_eval_dataset

        def locked_build(*args, **kwargs):
            dataset = cls.locked_call(build)(*args, **kwargs)
            dataset.create_dict_iterator = cls.locked_call(dataset.create_dict_iterator)
            return dataset
        monkeypatch.setattr(pipeline, "build_eval_dataset", locked_build)

    @classmethod
    def locked_call(cls, method):
        def locked(*args, **kwargs):
            with cls.lock:
                return method(*args, **kwargs)
        return locked

    def __init__(self, retriever):
        self.retriever, self.batch_size = retriever, retriever.batch_size

    def __getattr__(self, name):
        return self.locked_call(getattr(self.retriever, name))


def test_two_ranks_give_the_single_process_results(setup, monkeypatch):
    """Two ranks as two threads exchanging arrays through a stand-in all-gather (the real collective is covered by
    tests/integration/test_retrieval_cli.py's msrun test)."""
    _Locked.locked_pipelines(monkeypatch)
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def gather_for(rank):
        def gather(array):
            slots[rank] = np.asarray(array)
            barrier.wait()
            both = [slots[0].copy(), slots[1].copy()]
            barrier.wait()
            return both
        return gather

    def run(rank):
        results[rank] = _evaluate(setup, "itc_itm", k=2, rank=rank, world=2, gather=gather_for(rank),
                                  retriever=_Locked(setup["retriever"]))

    # daemon threads: a rank stuck in a deadlock fails the `result is not None` check below instead of keeping the
    # test process alive after the join timeout
    threads = [threading.Thread(target=run, args=(rank,), daemon=True) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)   # generous: a loaded machine (another job alongside) took over 120 s
    single = _evaluate(setup, "itc_itm", k=2)
    for result in results:
        assert result is not None
        assert result["text_image"] == pytest.approx(single["text_image"])
        assert result["pairs_scored"] >= single["pairs_scored"]  # ranks may both score a shared pair


@pytest.mark.slow
def test_fine_tuning_improves_training_set_recall(setup):
    cfg = setup["cfg"].with_updates({"data.use_audio": False})
    ms.set_seed(1)
    model = build_model(cfg.model)
    task = RetrievalTask(model, margin=0.2, itc_weight=1.0)
    # lr 5e-4: at 2e-3 this one-layer, 32-wide model collapses within a few steps to equal scores for every pair
    # (loss = ln 8 + margin) and recall moves by noise only
    step = TrainStep(task, build_optimizer(model.trainable_params(), cfg.optim.with_updates(
        {"lr": 5e-4, "warmup_steps": 0, "schedule": "constant"}), 60), LossScale("none"))
    step.set_train(True)
    batch = next(build_pretrain_dataset(cfg.data.train, "itc", cfg, setup["tokenizer"], N_TRAIN, 0)
                 .create_dict_iterator(num_epochs=1, output_numpy=True))
    inputs = [ms.Tensor(batch[name]) for name in task.input_names]

    retriever = RetrievalRunner(model, N_TRAIN)

    def train_recall():
        model.set_train(False)
        result = evaluate(model, cfg, setup["tokenizer"], cfg.data.train, "itc", retriever=retriever)
        model.set_train(True)
        return result["text_image"]["r_mean"]

    before = train_recall()
    losses = [float(step(*inputs)[0].asnumpy()) for _ in range(60)]
    after = train_recall()
    collapsed = math.log(N_TRAIN) + 0.2   # equal scores for every pair: InfoNCE ln B plus the ranking margin
    assert np.mean(losses[-10:]) < 0.75 * collapsed < losses[0]
    assert after >= before + 10   # recall points on the training pairs


# ----------------------------------------------------------------------------------------------- per-item audio


def test_audio_recalls_rank_only_the_items_with_audio():
    # 4 records, captions 0-1 of record 0, 2 of record 1, 3 of record 2, 4 of record 3; records 1 and 3 have no clip
    text_to_image = np.array([0, 0, 1, 2, 3])
    eye = np.eye(4, dtype=np.float32)
    texts, images = eye[text_to_image], eye
    audio = eye.copy()
    audio[[1, 3]] = eye[[0, 2]]  # an absent clip's feature would tie with the real ones (all-zero input)
    got = audio_recalls(texts, images, audio, np.array([1, 0, 1, 0]), text_to_image)
    assert got["n_audio"] == 2
    assert (got["text_audio"]["n_texts"], got["text_audio"]["n_images"]) == (3, 2)
    assert got["text_audio"]["ir_r1"] == got["image_audio"]["ir_r1"] == 100.0  # no tie with an absent clip
    assert got["chance_text_audio"]["ir_r1"] == pytest.approx(50.0)
    assert got["chance_image_audio"]["n_images"] == 2
    assert audio_recalls(texts, images, audio, np.zeros(4), text_to_image) == {"n_audio": 0}
    rows = table_rows({"mode": "itc", "text_image": directional_recall(texts @ images.T, texts @ images.T,
                                                                        text_to_image),
                       "chance": got["chance_text_audio"], **got})
    assert len(rows) == 12  # six directions, each with its chance row
    assert [(r["retrieval"], r["scoring"]) for r in rows][4:8] == [
        ("text→audio", "itc"), ("text→audio", "chance"), ("audio→text", "itc"), ("audio→text", "chance")]


@pytest.mark.slow
def test_audio_recalls_of_a_half_audio_set_are_those_of_its_audio_half(setup):
    """Every second test record loses its clip: the audio recalls are over the other half only (n_audio of them),
    equal to those of a MindRecord of that half alone, with a chance row of that many items."""
    root, cfg = setup["root"], setup["cfg"]
    kept = half_audio_manifest(root / "test.jsonl", root / "test_half_audio.jsonl")
    lines = (root / "test.jsonl").read_text(encoding="utf-8").splitlines()
    (root / "test_audio_half.jsonl").write_text("\n".join(lines[::2]) + "\n", encoding="utf-8")
    results = {}
    for name in ("test_half_audio", "test_audio_half"):
        build_mindrecord(str(root / f"{name}.jsonl"), str(root / f"{name}.mindrecord"), cfg.data.vocab, workers=1)
        results[name] = evaluate(setup["model"], cfg, setup["tokenizer"], str(root / f"{name}.mindrecord"), "itc",
                                 retriever=setup["retriever"])
    half, alone = results["test_half_audio"], results["test_audio_half"]
    n = len(kept)
    assert n == (N_TEST + 1) // 2 and half["n_images"] == N_TEST and half["n_audio"] == alone["n_audio"] == n
    for section in ("text_audio", "image_audio", "chance_text_audio", "chance_image_audio"):
        assert half[section]["n_images"] == n
        assert half[section] == pytest.approx(alone[section], abs=1e-9), section
    assert half["chance_text_audio"]["ir_r1"] == pytest.approx(100 / n)
    assert half["chance_image_audio"]["tr_r1"] == pytest.approx(100 / n)
