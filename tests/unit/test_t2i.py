"""Text-to-image: R-precision against hand-built score matrices, decoder tokens -> code grids (early-EOS filling),
and TextToImage on the tiny OPT model with a stand-in VQ (IDTask memory, top-k 1 = greedy, re-ranking, seeding)."""
import math

import numpy as np
import pytest

from src.data.labels import IMAGE_BOS_ID, IMAGE_EOS_ID, IMAGE_PAD_ID, IMAGE_TOKEN_OFFSET
from src.errors import UserError
from src.metrics.t2i import r_precision

CHARS = "左右中边有一个红绿蓝色的圆三角形正方"


# ------------------------------------------------------------------------------------------------ R-precision


def test_r_precision_counts_strict_wins_and_ties_as_misses():
    scores = [[0.9, 0.1, 0.2],   # own image best: hit
              [0.5, 0.5, 0.1],   # tie with another image: miss
              [0.3, 0.8, 0.7]]   # another image better: miss
    result = r_precision(scores)
    assert result == {"r1": pytest.approx(100.0 / 3), "chance_r1": pytest.approx(100.0 / 3), "pool_size": 3,
                      "n_prompts": 3}   # R@5 and R@10 are left out: the pool holds only 3 images


def test_r_precision_at_k_counts_ties_against_the_own_image():
    # own image (diagonal) ranks: row 0 -> 1, row 1 -> 3 (two ties), row 2 -> 4, row 3 -> 2
    scores = [[0.9, 0.1, 0.2, 0.3, 0.0, 0.0],
              [0.5, 0.5, 0.5, 0.1, 0.0, 0.0],
              [0.8, 0.9, 0.7, 0.75, 0.0, 0.0],
              [0.0, 0.0, 0.9, 0.5, 0.0, 0.0],
              [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
              [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]
    result = r_precision(scores, ks=(1, 2, 3, 5))
    assert result["r1"] == pytest.approx(100 * 3 / 6)   # rows 0, 4, 5
    assert result["r2"] == pytest.approx(100 * 4 / 6)   # + row 3
    assert result["r3"] == pytest.approx(100 * 5 / 6)   # + row 1
    assert result["r5"] == 100.0
    assert result["chance_r2"] == pytest.approx(100 * 2 / 6)


def test_r_precision_with_more_prompts_than_the_pool():
    n = 6
    own_best = np.eye(n) + 0.01 * np.arange(n)[None]   # own image beats every other
    assert r_precision(own_best, pool_size=3, ks=(1,)) == {"r1": 100.0, "chance_r1": 100.0 / 3, "pool_size": 3,
                                                           "n_prompts": n}
    assert r_precision(-np.eye(n), pool_size=3)["r1"] == 0.0
    # prompt i loses only to image (i + 1) % n: it hits exactly when that image is not drawn into its pool of 3
    scores = np.eye(n) * 0.5
    for i in range(n):
        scores[i, (i + 1) % n] = 1.0
    result = r_precision(scores, pool_size=3, seed=7)
    hits = [(i + 1) % n not in np.random.default_rng([7, i]).choice(np.delete(np.arange(n), i), 2, replace=False)
            for i in range(n)]
    assert result["r1"] == pytest.approx(100.0 * np.mean(hits))
    assert r_precision(scores, pool_size=n)["r1"] == 0.0   # the whole pool: every prompt meets its rival


def test_r_precision_rejects_bad_input():
    with pytest.raises(UserError, match="square"):
        r_precision(np.zeros((2, 3)))
    with pytest.raises(UserError, match="NaN"):
        r_precision([[1.0, math.nan], [0.0, 1.0]])


# ---------------------------------------------------------------------------------------- tokens -> code grid


def tokens(*codes, tail=()):
    return np.array([c + IMAGE_TOKEN_OFFSET for c in codes] + list(tail), np.int32)


def test_tokens_to_grid_full_and_overlong():
    from src.inference.t2i import tokens_to_grid
    grid, filled = tokens_to_grid(tokens(5, 6, 7, 1, 2, 3), 2, 3)
    assert grid.tolist() == [[5, 6, 7], [1, 2, 3]] and filled == 0
    grid, filled = tokens_to_grid(tokens(5, 6, 7, 1, 2, 3, 4, 4), 2, 3)
    assert grid.tolist() == [[5, 6, 7], [1, 2, 3]] and filled == 0


def test_tokens_to_grid_fills_after_an_early_eos():
    from src.inference.t2i import tokens_to_grid
    # missing cells copy the cell above
    grid, filled = tokens_to_grid(tokens(5, 6, 7, 1, tail=(IMAGE_EOS_ID, IMAGE_PAD_ID)), 2, 3)
    assert grid.tolist() == [[5, 6, 7], [1, 6, 7]] and filled == 2
    # in the first row: the cell to the left; a code after EOS is ignored
    grid, filled = tokens_to_grid(tokens(4, tail=(IMAGE_EOS_ID, 9 + IMAGE_TOKEN_OFFSET)), 2, 3)
    assert grid.tolist() == [[4, 4, 4], [4, 4, 4]] and filled == 5
    grid, filled = tokens_to_grid(np.array([IMAGE_EOS_ID, IMAGE_PAD_ID]), 2, 2)
    assert grid.tolist() == [[0, 0], [0, 0]] and filled == 4
    # PAD / BOS inside the row are dropped, not read as codes
    grid, filled = tokens_to_grid(np.array([8, IMAGE_PAD_ID, 9, IMAGE_BOS_ID, 10, 11]), 2, 2)
    assert grid.tolist() == [[5, 6], [7, 8]] and filled == 0


def test_rank_candidates_sorts_by_descending_score_stably():
    from src.inference.t2i import rank_candidates
    assert rank_candidates([0.1, 0.7, 0.7, -0.2]).tolist() == [1, 2, 0, 3]


# ------------------------------------------------------------------------------------- TextToImage, tiny model


class FakeVQ:
    """Stand-in for src.models.vq.VQVAE: code c decodes to a flat `downsample` x `downsample` block of value
    (c / (K - 1)) * 2 - 1 in every channel. The default 2 x 2 grid keeps generation short (4 codes); its 16 px images
    are resized to the tiny model's 32 px for the towers."""

    def __init__(self, codebook_size=16, image_size=16, downsample=8):
        self.codebook_size, self.image_size, self.downsample = codebook_size, image_size, downsample
        self.grid_size = image_size // downsample

    def decode(self, codes):
        codes = np.asarray(codes)
        values = codes.astype(np.float32) / (self.codebook_size - 1) * 2.0 - 1.0
        block = np.kron(values, np.ones((self.downsample, self.downsample), np.float32))
        return np.repeat(block[:, None], 3, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, tokenizer, cfg) of the tiny OPT config with a small Chinese vocabulary."""
    from src.config import load_config
    from src.data.tokenizer import Tokenizer
    from src.models.opt import build_model
    from tests.helpers import ROOT
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS]) + "\n", encoding="utf-8")
    tokenizer = Tokenizer(str(vocab))
    cfg = load_config(f"{ROOT}/config/pretrain/tiny.yaml", [f"data.vocab={vocab}",
                                                            f"model.text.vocab_size={tokenizer.vocab_size}"])
    model = build_model(cfg.model)
    model.set_train(False)
    return model, tokenizer, cfg


def make_t2i(tiny, vq=None, **settings):
    from src.inference.t2i import TextToImage
    model, tokenizer, cfg = tiny
    return TextToImage(model, vq or FakeVQ(), tokenizer, cfg, batch_size=4, **settings)


def test_memory_is_the_image_decoding_task_encoding(tiny, pynative):
    import mindspore as ms
    from src.tasks.pretrain import IDTask
    t2i = make_t2i(tiny)
    ids, mask = t2i.encode_texts(["左边有一个红色的圆", "右边有一个蓝色的三角形"])
    memory, memory_mask = t2i.memory(ids, mask)
    task = IDTask(tiny[0], tiny[2].pretrain, has_audio=False)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)  # ignored: all masked
    expected, expected_mask = task.encode(ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(pixels),
                                          ms.Tensor(np.ones((2, 16), np.float32)))
    np.testing.assert_allclose(memory, expected.asnumpy(), atol=1e-5)
    np.testing.assert_array_equal(memory_mask, expected_mask.asnumpy())


@pytest.mark.slow
def test_sampling_with_top_k_1_equals_greedy(tiny, pynative):
    t2i = make_t2i(tiny, FakeVQ(image_size=32), top_k=1, candidates=2)   # 4 x 4 codes, no resizing
    sampled = t2i.generate("左边有一个红色的圆")
    greedy = t2i.generate("左边有一个红色的圆", strategy="greedy")
    assert sampled.codes.shape == (2, 4, 4)
    np.testing.assert_array_equal(sampled.codes, greedy.codes)
    np.testing.assert_array_equal(sampled.codes[0], sampled.codes[1])
    assert sampled.filled.tolist() == [0, 0]  # EOS is forbidden until the grid is full


@pytest.mark.slow
def test_guidance_steers_greedy_codes_by_the_empty_prompt(tiny, pynative):
    """Greedy codes with guidance g are the argmax of log p(. | empty) + g (log p(. | prompt) - log p(. | empty)),
    step by step (checked against the decoder run on the whole sequence); g = 1 is plain greedy."""
    import mindspore as ms
    from src.inference.generation import log_softmax
    from src.models.opt import build_model
    _, tokenizer, cfg = tiny
    model = build_model(cfg.model)   # the image decoder with large weights, so that its outputs follow the memory
    model.set_train(False)
    rng = np.random.default_rng(0)
    for p in model.image_decoder.get_parameters():
        if not p.name.endswith((".gamma", ".beta")):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.4, p.shape).astype(np.float32)))
    strong = (model, tokenizer, cfg)
    prompt = "左边有一个红色的圆"
    plain = make_t2i(strong, FakeVQ(image_size=32)).generate(prompt, strategy="greedy")
    np.testing.assert_array_equal(make_t2i(strong, FakeVQ(image_size=32), guidance=1.0).generate(
        prompt, strategy="greedy").codes, plain.codes)
    t2i = make_t2i(strong, FakeVQ(image_size=32), guidance=4.0)
    guided = t2i.generate(prompt, strategy="greedy").codes[0].reshape(-1)
    cond = t2i.memory(*t2i.encode_texts([prompt]))
    uncond = t2i.unconditional_memory()
    decoder = model.image_decoder
    tokens = np.concatenate([[IMAGE_BOS_ID], guided + IMAGE_TOKEN_OFFSET])[None].astype(np.int32)
    logits = [log_softmax(decoder(ms.Tensor(tokens), ms.Tensor(m), ms.Tensor(k)).asnumpy()[0]) for m, k in
              (cond, uncond)]
    steered = logits[1] + 4.0 * (logits[0] - logits[1])
    steered[:, [IMAGE_PAD_ID, IMAGE_BOS_ID, IMAGE_EOS_ID]] = -np.inf
    np.testing.assert_array_equal(steered[:len(guided)].argmax(1), guided + IMAGE_TOKEN_OFFSET)
    assert not np.array_equal(guided, plain.codes[0].reshape(-1))   # the empty prompt's pull is visible
    with pytest.raises(UserError, match="t2i.guidance must be >= 0"):
        make_t2i(tiny, guidance=-1.0)


@pytest.mark.slow
def test_generation_is_seeded_per_prompt(tiny, pynative):
    t2i = make_t2i(tiny, candidates=3, seed=5)
    alone = t2i.generate("右边有一个蓝色的三角形")
    batch = t2i.generate(["左边有一个红色的圆", "右边有一个蓝色的三角形"])
    np.testing.assert_array_equal(batch[1].codes, alone.codes)
    assert batch[1].prompt == alone.prompt and alone.images.shape == (3, 16, 16, 3)
    other_seed = make_t2i(tiny, candidates=3, seed=6).generate("右边有一个蓝色的三角形")
    assert not np.array_equal(other_seed.codes, alone.codes)


@pytest.mark.parametrize("rerank", ["itc", "itm"])
def test_candidates_are_reranked_by_the_models_text_image_score(tiny, rerank, pynative):
    import mindspore as ms
    from mindspore import ops
    from src.data.transforms import to_uint8
    from src.inference.retrieval import ImageTower, PairScorer, TextTower
    model = tiny[0]
    t2i = make_t2i(tiny, candidates=4, rerank=rerank, seed=1)
    prompt = "中间有一个绿色的正方形"
    result = t2i.generate(prompt)
    assert sorted(result.order.tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(result.scores) <= 0)
    # recompute every candidate's score from its codes with the model's own towers
    images = FakeVQ().decode(result.codes)
    np.testing.assert_array_equal(result.images, to_uint8(images))
    resized = ops.interpolate(ms.Tensor(images), size=(32, 32), mode="bilinear")   # the tiny model's size
    ids, mask = t2i.encode_texts([prompt])
    t_tokens, t_mask, t_feat = TextTower(model)(ms.Tensor(ids), ms.Tensor(mask))
    i_tokens, i_mask, i_feat = ImageTower(model)(resized)
    if rerank == "itc":
        expected = i_feat.asnumpy() @ t_feat.asnumpy()[0]
    else:
        rows = lambda x: ms.Tensor(np.repeat(x.asnumpy(), 4, 0))  # noqa: E731
        expected = PairScorer(model)(rows(t_tokens), rows(t_mask), i_tokens, i_mask).asnumpy()
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.image_features, i_feat.asnumpy(), atol=1e-5)


@pytest.mark.slow
def test_reranking_returns_the_best_candidate_first(tiny, pynative):
    from src.inference.t2i import TextToImage

    class FixedScores(TextToImage):
        def score(self, text, images):
            return np.array([0.2, 0.9, -0.5, 0.4]), np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2))

    model, tokenizer, cfg = tiny
    t2i = FixedScores(model, FakeVQ(), tokenizer, cfg, candidates=4, seed=3)
    plain = make_t2i(tiny, candidates=4, seed=3).generate("左边有一个红色的圆")
    ranked = t2i.generate("左边有一个红色的圆")
    assert ranked.order.tolist() == [1, 3, 0, 2]
    assert ranked.scores.tolist() == [0.9, 0.4, 0.2, -0.5]
    np.testing.assert_array_equal(ranked.codes, plain.codes[np.argsort(plain.order)][[1, 3, 0, 2]])
    np.testing.assert_array_equal(ranked.best, ranked.images[0])
    assert ranked.image_features[:, 0].tolist() == [1.0, 3.0, 0.0, 2.0]


def test_code_log_likelihood_sums_the_decoders_log_probabilities_of_the_codes(tiny, pynative):
    """Against the decoder run by hand on [BOS] + shifted codes: the sum of log-softmax at each code, EOS left out."""
    import mindspore as ms
    model = tiny[0]
    t2i = make_t2i(tiny)   # 2 x 2 codes
    shape = t2i.memory(*t2i.encode_texts(["左边有一个红色的圆"]))[0].shape[1:]
    memory = 3.0 * np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)  # two distinct memories
    memory_mask = np.ones((2, shape[0]), np.float32)
    memory_mask[1, shape[0] // 2:] = 0.0
    codes = np.array([[[3, 0], [15, 7]], [[1, 1], [2, 9]]])
    got = t2i.code_log_likelihood(codes, memory, memory_mask)
    max_len = tiny[2].model.image_decoder.max_len
    for b in range(2):
        tokens = codes[b].reshape(-1) + IMAGE_TOKEN_OFFSET
        inputs = np.full((1, max_len), IMAGE_PAD_ID, np.int32)
        inputs[0, 0], inputs[0, 1:5] = IMAGE_BOS_ID, tokens
        logits = model.image_decoder(ms.Tensor(inputs), ms.Tensor(memory[b:b + 1]),
                                     ms.Tensor(memory_mask[b:b + 1])).asnumpy()[0].astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        assert got[b] == pytest.approx(sum(log_probs[t, tokens[t]] for t in range(4)), abs=2e-5)
    swapped = t2i.code_log_likelihood(codes, memory[::-1], memory_mask[::-1])
    assert np.abs(swapped - got).max() > 1e-4   # each row reads its own memory (the untrained decoder barely does)


def test_likelihood_metrics_rank_each_images_own_prompt_within_its_pool(monkeypatch):
    """Image i has code value i, prompt j memory value j, and log p(image i | prompt j) = -(i - j)^2 - 0.1 j, less 1
    for image 4 with its own prompt: every image's own prompt explains it best, except image 4, which prefers prompt 3
    (-1.3 against -1.4) when prompt 3 is in its pool. With 6 images and pools of 4 the pools are drawn; the code NLL
    is the own prompts' mean per code."""
    from types import SimpleNamespace
    from src.evaluation.t2i import likelihood_metrics
    from src.metrics.t2i import pool_others

    class Stub:
        n_codes, batch_size = 4, 2
        cfg = SimpleNamespace(data=SimpleNamespace(background=[255, 255, 255], resize="crop", pad_color=None))
        vq = SimpleNamespace(image_size=8, encode=lambda images: images[:, 0, :2, :2].round().astype(np.int32))

        def encode_texts(self, prompts):
            return np.array([[int(p)] for p in prompts]), np.ones((len(prompts), 1))

        def memory(self, ids, mask):
            return ids.astype(np.float64), mask

        def code_log_likelihood(self, codes, memory, memory_mask, batch_size=None):
            i, j = codes[:, 0, 0].astype(np.float64), memory[:, 0]
            return -(i - j) ** 2 - 0.1 * j - 1.0 * ((i == 4) & (j == 4))

    images = [np.full((3, 8, 8), float(i), np.float32) for i in range(6)]   # the "files" are the pixels
    monkeypatch.setattr("src.evaluation.t2i.reference_images", lambda sources, size, rules: np.stack(sources))
    metrics = likelihood_metrics(Stub(), [str(j) for j in range(6)], images, pool_size=4)
    own = -0.1 * np.arange(6) - 1.0 * (np.arange(6) == 4)
    assert metrics["code_nll"] == pytest.approx(-own.mean() / 4)
    assert metrics["code_perplexity"] == pytest.approx(np.exp(-own.mean() / 4))
    image_4_wins = 3 not in pool_others(6, 4)[4]
    assert metrics["likelihood_r1"] == pytest.approx(100 * (5 + image_4_wins) / 6)
    assert "likelihood_r5" not in metrics   # k larger than the pool


def test_mismatched_vq_is_a_user_error(tiny):
    with pytest.raises(UserError, match="codebook_size"):
        make_t2i(tiny, FakeVQ(codebook_size=32))
    with pytest.raises(UserError, match="max_len"):
        make_t2i(tiny, FakeVQ(image_size=64))
    with pytest.raises(UserError, match="rerank"):
        make_t2i(tiny, rerank="clip")
