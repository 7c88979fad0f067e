"""Decoding: greedy / beam / sampling on the tiny OPT decoder (KV cache vs. no cache, n-gram blocking) and on a
hand-built table decoder whose best sequences are known (beam vs. greedy vs. brute force, length penalty, EOS
handling in a batch, sampling filters)."""
import itertools
import math

import mindspore as ms
import numpy as np
import pytest

from src.errors import UserError
from src.inference.generation import (generate, gnmt_length_penalty, log_softmax, sampling_probs,
                                      score_sequences)
from src.models.opt import build_model
from tests.helpers import model_config

PAD, BOS, EOS = 0, 1, 2
CONTENT = (3, 4, 5)


class TableDecoder:
    """Stand-in for `Decoder` (same prepare / step / construct interface). The next-token distribution is
    `probs(m, prefix)` -> {token: p} with m = int(memory[b, 0, 0]) and prefix = the tokens generated so far; every
    other token gets p = 1e-12. Its cache is the token history, so a wrong beam reorder changes its answers."""

    num_layers = 0  # state = (memory, history): only the memory is constant

    def __init__(self, probs, max_len=8, vocab_size=6):
        self.probs, self.max_len, self.vocab_size = probs, max_len, vocab_size

    def logits(self, m, prefix):
        p = np.full(self.vocab_size, 1e-12)
        for token, value in self.probs(int(m), tuple(int(x) for x in prefix)).items():
            p[token] = value
        return np.log(p)

    def prepare(self, memory, memory_mask):
        return memory, ms.Tensor(np.full((memory.shape[0], self.max_len), -1, np.int32))

    def step(self, token, position, state):
        pos = int(position.asnumpy()[0])
        history = state[1].asnumpy().copy()
        history[:, pos] = token.asnumpy()[:, 0]
        m = state[0].asnumpy()[:, 0, 0]
        logits = np.stack([self.logits(m[b], history[b, 1:pos + 1]) for b in range(len(history))])
        return ms.Tensor(logits.astype(np.float32)), (state[0], ms.Tensor(history))

    def __call__(self, tokens, memory, memory_mask):
        tokens, m = tokens.asnumpy(), memory.asnumpy()[:, 0, 0]
        out = [[self.logits(m[b], tokens[b, 1:t + 1]) for t in range(tokens.shape[1])] for b in range(len(tokens))]
        return ms.Tensor(np.array(out, np.float32))


def memory_of(*m):
    return np.array(m, np.float32).reshape(-1, 1, 1), np.ones((len(m), 1), np.float32)


def run(decoder, m, **kw):
    memory, mask = memory_of(*m)
    kw.setdefault("max_len", decoder.max_len)
    return generate(decoder, memory, mask, BOS, EOS, PAD, **kw)


def brute_force(decoder, m, max_len, min_len, alpha):
    """Best (tokens, log-prob) over every EOS-ended or max_len-long sequence, ranked by log-prob / lp(length)."""
    def logprob(seq):
        return sum(log_softmax(decoder.logits(m, seq[:i]))[tok] for i, tok in enumerate(seq))
    candidates = [s + (EOS,) for n in range(min_len, max_len) for s in itertools.product(CONTENT, repeat=n)]
    candidates += list(itertools.product(CONTENT, repeat=max_len))
    scored = [(logprob(s) / gnmt_length_penalty(len(s), alpha), logprob(s), list(s)) for s in candidates]
    _, raw, seq = max(scored)
    return seq, raw


def trap(m, prefix):
    """Greedy takes 3 then EOS (p = 0.5 * 0.35 = 0.175); the best sequence is 4 EOS (p = 0.4 * 0.9 = 0.36)."""
    table = {(): {3: .5, 4: .4, 5: .1}, (3,): {EOS: .35, 3: .25, 4: .2, 5: .2}}
    return table.get(prefix, {EOS: .9, 3: .04, 4: .03, 5: .03})


def test_beam_search_beats_greedy_and_finds_the_brute_force_optimum(pynative):
    decoder = TableDecoder(trap, max_len=4)
    greedy, greedy_score = run(decoder, [0], strategy="greedy")
    assert greedy.tolist() == [[3, EOS]]
    np.testing.assert_allclose(greedy_score, [math.log(0.175)], rtol=1e-6)
    best, best_score = brute_force(decoder, 0, 4, 1, 0.0)
    assert best == [4, EOS]
    for beams in (2, 3):
        tokens, score = run(decoder, [0], strategy="beam", beam_size=beams, length_penalty=0.0)
        assert tokens.tolist() == [best]
        np.testing.assert_allclose(score, [best_score], rtol=1e-6)
        np.testing.assert_allclose(score, [math.log(0.36)], rtol=1e-6)


def random_table(m, prefix):
    p = np.random.default_rng([17, m, *prefix]).dirichlet(np.ones(4))
    return dict(zip((EOS,) + CONTENT, p))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_exhaustive_beam_equals_brute_force_on_a_random_table(pynative, alpha):
    """A beam wider than the number of hypotheses keeps everything, so it must return the brute-force optimum."""
    decoder = TableDecoder(random_table, max_len=4)
    tokens, scores = run(decoder, [0, 1], strategy="beam", beam_size=120, length_penalty=alpha)
    for row, m in enumerate([0, 1]):
        best, best_score = brute_force(decoder, m, 4, 1, alpha)
        assert tokens[row, :len(best)].tolist() == best and (tokens[row, len(best):] == PAD).all()
        np.testing.assert_allclose(scores[row], best_score, rtol=1e-6)


def lengthy(m, prefix):
    """Short 3 EOS: log-prob log 0.36 = -1.022. Long 4 5 5 EOS: log 0.4 * 0.95**3 = -1.070, i.e. lower, but with
    alpha = 1 it ranks higher: -1.070 / lp(4) = -1.070 / 1.5 = -0.713 > -1.022 / lp(2) = -1.022 / (7/6) = -0.876."""
    table = {(): {3: .6, 4: .4}, (3,): {EOS: .6, 5: .4}, (3, 5): {3: 1.0}, (4,): {5: .95, EOS: .05},
             (4, 5): {5: .95, EOS: .05}, (4, 5, 5): {EOS: .95, 3: .05}}
    return table.get(prefix, {3: .99, EOS: .01})


def test_length_penalty_changes_the_winner_as_specified(pynative):
    assert gnmt_length_penalty(4, 1.0) == pytest.approx(1.5)
    assert gnmt_length_penalty(2, 0.5) == pytest.approx((7 / 6) ** 0.5)
    decoder = TableDecoder(lengthy, max_len=5)
    short, long_ = [3, EOS], [4, 5, 5, EOS]
    tokens, score = run(decoder, [0], strategy="beam", beam_size=2, length_penalty=0.0)
    assert tokens[0, :2].tolist() == short and (tokens[0, 2:] == PAD).all()
    np.testing.assert_allclose(score, [math.log(0.36)], rtol=1e-6)
    tokens, score = run(decoder, [0], strategy="beam", beam_size=2, length_penalty=1.0)
    assert tokens.tolist() == [long_]
    np.testing.assert_allclose(score, [math.log(0.4 * 0.95 ** 3)], rtol=1e-6)
    for alpha, expected in ((0.0, short), (1.0, long_)):
        assert brute_force(decoder, 0, 5, 1, alpha)[0] == expected


def countdown(m, prefix):
    """Row m wants m tokens 3, 4, 5, 3, ... then EOS (p = 0.7 each); below that, EOS has p = 0.2."""
    if len(prefix) >= m:
        return {EOS: .7, 3: .2, 4: .1}
    return {3 + len(prefix) % 3: .7, EOS: .2, 3 + (len(prefix) + 1) % 3: .1}


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_rows_stop_at_their_own_eos_and_respect_min_len(pynative, strategy):
    decoder = TableDecoder(countdown, max_len=8)
    kw = {"strategy": strategy, "beam_size": 1}
    tokens, scores = run(decoder, [1, 3, 0], **kw)
    assert tokens.tolist() == [[3, EOS, PAD, PAD], [3, 4, 5, EOS], [3, EOS, PAD, PAD]]  # min_len 1: no empty output
    np.testing.assert_allclose(scores, np.log([.7 * .7, .7 ** 4, .2 * .7]), rtol=1e-6)
    memory, mask = memory_of(1, 3, 0)
    np.testing.assert_allclose(score_sequences(decoder, memory, mask, tokens, BOS, EOS, PAD), scores, rtol=1e-6)
    tokens, scores = run(decoder, [1, 3, 0], min_len=3, **kw)
    assert tokens.tolist() == [[3, 3, 3, EOS], [3, 4, 5, EOS], [3, 3, 3, EOS]]
    np.testing.assert_allclose(scores, np.log([.7 * .2 * .2 * .7, .7 ** 4, .2 ** 3 * .7]), rtol=1e-6)
    tokens, _ = run(decoder, [1, 3, 0], min_len=0, **kw)
    assert tokens.tolist() == [[3, EOS, PAD, PAD], [3, 4, 5, EOS], [EOS, PAD, PAD, PAD]]
    tokens, _ = run(decoder, [6, 2], max_len=3, **kw)  # max_len stops row 0 without EOS
    assert tokens.tolist() == [[3, 4, 5], [3, 4, EOS]]


def test_decoding_without_the_cache_and_beam_reordering_agree_on_the_table_decoder(pynative):
    decoder = TableDecoder(random_table, max_len=4)
    for strategy in ("greedy", "beam"):
        cached = run(decoder, [0, 1, 2], strategy=strategy, beam_size=3)
        full = run(decoder, [0, 1, 2], strategy=strategy, beam_size=3, use_cache=False)
        np.testing.assert_array_equal(cached[0], full[0])
        np.testing.assert_allclose(cached[1], full[1], rtol=1e-6)


def test_sampling_probs_temperature_top_k_and_top_p():
    logits = np.log([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(sampling_probs(logits), [[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(sampling_probs(logits, top_k=2), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(sampling_probs(logits, top_p=0.7), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(sampling_probs(logits, top_p=0.85), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    np.testing.assert_allclose(sampling_probs(logits, top_p=0.01), [[1, 0, 0, 0]])
    hot = np.array([0.5, 0.3, 0.15, 0.05]) ** 0.5
    np.testing.assert_allclose(sampling_probs(logits, temperature=2.0), [hot / hot.sum()])


def test_sampling_draws_follow_the_filtered_distribution(pynative):
    decoder = TableDecoder(lambda m, prefix: {3: .5, 4: .3, 5: .15, EOS: .05}, max_len=1)
    tokens, _ = run(decoder, [0] * 400, strategy="sample", top_k=2, seed=3)
    counts = np.bincount(tokens[:, 0], minlength=6)
    assert counts[5] == counts[EOS] == 0 and counts[3] + counts[4] == 400
    assert abs(counts[3] / 400 - 0.625) < 0.08


@pytest.fixture(scope="module")
def decoder():
    """The tiny text decoder with large random weights (LayerNorms left alone), so that its outputs depend on the
    prefix and the memory."""
    model = build_model(model_config("tiny").model)
    model.set_train(False)
    rng = np.random.default_rng(0)
    for p in model.text_decoder.get_parameters():
        if not p.name.endswith((".gamma", ".beta")):
            p.set_data(ms.Tensor(rng.normal(0.0, 0.4, p.shape).astype(np.float32)))
    return model.text_decoder


@pytest.fixture(scope="module")
def memory():
    rng = np.random.default_rng(1)
    mask = np.ones((3, 9), np.float32)
    mask[1, 5:] = 0
    width = model_config("tiny").model.cross.hidden
    return rng.standard_normal((3, 9, width)).astype(np.float32), mask


def real(decoder, memory, **kw):
    return generate(decoder, *memory, BOS, EOS, PAD, kw.pop("max_len", 12), **kw)


@pytest.mark.slow
def test_greedy_and_beam_are_the_same_with_and_without_the_kv_cache(decoder, memory):
    greedy = real(decoder, memory)
    assert len({tuple(row) for row in greedy[0].tolist()}) == 3  # the rows differ: the memory matters
    for strategy in ("greedy", "beam"):
        cached, full = real(decoder, memory, strategy=strategy), real(decoder, memory, strategy=strategy,
                                                                        use_cache=False)
        np.testing.assert_array_equal(cached[0], full[0])
        np.testing.assert_allclose(cached[1], full[1], atol=1e-4)
        np.testing.assert_allclose(score_sequences(decoder, *memory, cached[0], BOS, EOS, PAD), cached[1], atol=1e-4)


def test_beam_of_one_is_greedy_and_top_k_1_or_small_top_p_sampling_is_greedy(decoder, memory):
    greedy = real(decoder, memory)
    for kw in ({"strategy": "beam", "beam_size": 1}, {"strategy": "sample", "top_k": 1, "seed": 5},
               {"strategy": "sample", "top_p": 1e-6, "seed": 6, "temperature": 3.0}):
        tokens, scores = real(decoder, memory, **kw)
        np.testing.assert_array_equal(tokens, greedy[0])
        np.testing.assert_allclose(scores, greedy[1], atol=1e-5)


def test_sampling_is_deterministic_given_the_seed(decoder, memory):
    a = real(decoder, memory, strategy="sample", seed=7)
    b = real(decoder, memory, strategy="sample", seed=7)
    c = real(decoder, memory, strategy="sample", seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].tolist() != c[0].tolist()


def repeated_ngrams(row, n):
    grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_no_repeat_ngram_never_repeats_an_ngram(decoder, memory, strategy):
    plain = real(decoder, memory, strategy=strategy, min_len=12)[0]
    assert any(repeated_ngrams(row, 2) for row in plain.tolist())  # the model does repeat itself
    for n in (1, 2, 3):
        tokens = real(decoder, memory, strategy=strategy, min_len=12, no_repeat_ngram=n)[0]
        assert tokens.shape == (3, 12)
        assert all(repeated_ngrams(row, n) == 0 for row in tokens.tolist())


def test_bad_settings_raise_user_errors(pynative):
    decoder = TableDecoder(trap, max_len=4)
    for kw, word in (({"max_len": 5}, "max_len"), ({"strategy": "nucleus"}, "strategy"), ({"top_p": 0.0}, "top_p"),
                     ({"beam_size": 0}, "beam_size"), ({"temperature": 0.0}, "temperature")):
        with pytest.raises(UserError, match=word):
            run(decoder, [0], **kw)


def guided_pair(m, prefix):
    """m = 1: the conditional table, m = 2: the unconditional one. Unguided greedy writes 3 EOS; guidance at scale 2
    (2 log p_c - log p_u) prefers 4 first (2 ln .4 - ln .1 = 0.47 against 2 ln .5 - ln .7 = -1.03), then EOS."""
    cond = {(): {3: .5, 4: .4, 5: .1}, (4,): {EOS: .6, 3: .3, 5: .1}, (3,): {EOS: .9, 4: .05, 5: .05}}
    uncond = {(): {3: .7, 4: .1, 5: .2}, (4,): {EOS: .2, 3: .7, 5: .1}, (3,): {EOS: .5, 4: .25, 5: .25}}
    return (cond if m == 1 else uncond).get(prefix, {EOS: .9, 3: .04, 4: .03, 5: .03})


def guided_logprobs(decoder, prefix, scale):
    """Normalised guided log-probabilities of the next token after `prefix`, computed from the two tables."""
    cond, uncond = log_softmax(decoder.logits(1, prefix)), log_softmax(decoder.logits(2, prefix))
    return log_softmax(uncond + scale * (cond - uncond))


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_classifier_free_guidance_decodes_the_guided_distribution_row_by_row(pynative, strategy):
    decoder = TableDecoder(guided_pair, max_len=4)
    kw = {"strategy": strategy, "beam_size": 2}
    assert run(decoder, [1], **kw)[0].tolist() == [[3, EOS]]
    uncond = memory_of(2, 1)   # row 0 guided by the unconditional table, row 1 by its own memory (no effect)
    tokens, scores = run(decoder, [1, 1], guidance=(*uncond, 2.0), **kw)
    assert tokens.tolist() == [[4, EOS], [3, EOS]]
    expected = guided_logprobs(decoder, (), 2.0)[4] + guided_logprobs(decoder, (4,), 2.0)[EOS]
    np.testing.assert_allclose(scores, [expected, np.log(.5 * .9)], rtol=1e-6)
    same = run(decoder, [1, 1], guidance=(*memory_of(2, 2), 1.0), **kw)   # scale 1: the conditional model
    assert same[0].tolist() == [[3, EOS], [3, EOS]]
    np.testing.assert_allclose(same[1], np.log([.5 * .9] * 2), rtol=1e-6)
    no_cache = run(decoder, [1, 1], guidance=(*uncond, 2.0), use_cache=False, **kw)
    np.testing.assert_array_equal(no_cache[0], tokens)


@pytest.mark.slow
def test_guidance_against_the_same_memory_changes_nothing_on_the_tiny_decoder(decoder, memory):
    for strategy in ("greedy", "beam"):
        plain = real(decoder, memory, strategy=strategy)
        guided = real(decoder, memory, strategy=strategy, guidance=(*memory, 3.0))
        np.testing.assert_array_equal(guided[0], plain[0])
        np.testing.assert_allclose(guided[1], plain[1], atol=1e-4)
    shifted = real(decoder, memory, guidance=(memory[0][::-1].copy(), memory[1][::-1].copy(), 3.0))
    assert shifted[0].tolist() != real(decoder, memory)[0].tolist()   # another unconditional memory steers it
    with pytest.raises(UserError, match="guidance memory"):
        real(decoder, memory, guidance=(memory[0][:2], memory[1][:2], 2.0))
