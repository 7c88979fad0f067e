"""Captioning / VQA task Cells, the SCST reward and loss, closed-vocabulary VQA and the evaluation helpers, on the
tiny model with random inputs (PyNative: no graph compiles) and hand-computed values."""
import mindspore as ms
import numpy as np
import pytest

from src.engine.optim import build_optimizer
from src.engine.train_step import LossScale, TrainStep
from src.evaluation.caption import eval_batch_size
from src.evaluation.vqa import answer_list, answer_scores
from src.inference.generation import score_sequences
from src.inference.text_generator import Answerer, TextGenerator, decoding_settings
from src.models.opt import build_model
from src.tasks.caption import (CaptionTask, SCSTTask, VQATask, cider_scores, encode_inputs, repeat_rows,
                               scst_advantages, teacher_forcing_arrays)
from tests.helpers import model_config, model_inputs

PAD, BOS, EOS, MASK = 0, 2, 3, 4   # the tiny tests' ids for [PAD], [CLS] (BOS), [SEP] (EOS) and [MASK]


class _Tokens:
    """Tokenizer stand-in: ids are written as their numbers."""
    pad_id, cls_id, sep_id, mask_id = PAD, BOS, EOS, MASK

    def decode(self, ids):
        out = []
        for i in ids:
            if i == EOS:
                break
            out.append(str(int(i)))
        return " ".join(out)

    def encode(self, text, max_len):
        return np.array([BOS] + [int(w) for w in text.split()] + [EOS], np.int32)[:max_len]


@pytest.fixture(scope="module")
def model():
    net = build_model(model_config("tiny").model)
    net.set_train(False)
    return net


def decoder_batch(rng, batch, length, vocab):
    tokens = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    dec_input = np.concatenate([np.full((batch, 1), BOS, np.int32), tokens[:, :-1]], 1)
    weights = np.ones((batch, length), np.float32)
    weights[0, length // 2:] = 0.0
    return dec_input, tokens, weights


def reference_loss(logits, target, weights, smoothing):
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
    per_token = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    return (per_token * weights).sum() / weights.sum()


def test_caption_and_vqa_losses_match_a_recomputation(model, pynative):
    cfg = model.cfg
    x = model_inputs(cfg, batch=3, seed=1, text_len=6)
    rng = np.random.default_rng(0)
    dec_input, target, weights = decoder_batch(rng, 3, cfg.text_decoder.max_len, cfg.text.vocab_size)
    t = {k: ms.Tensor(v) for k, v in x.items()}
    caption = CaptionTask(model, has_audio=True, label_smoothing=0.1)
    assert caption.input_names == ("image", "dec_input", "dec_target", "dec_weights", "audio", "frame_mask")
    loss = caption(t["images"], ms.Tensor(dec_input), ms.Tensor(target), ms.Tensor(weights), t["audio"],
                   t["frame_mask"]).asnumpy()
    seq, mask = encode_inputs(model, t["images"], t["audio"], t["frame_mask"])
    logits = model.text_decoder(ms.Tensor(dec_input), seq, mask).asnumpy().astype(np.float64)
    np.testing.assert_allclose(loss, reference_loss(logits, target, weights, 0.1), rtol=1e-5)

    vqa = VQATask(model, has_audio=False, label_smoothing=0.0)
    assert vqa.input_names[:3] == ("question_ids", "question_mask", "image")
    loss = vqa(t["text_ids"], t["text_mask"], t["images"], ms.Tensor(dec_input), ms.Tensor(target),
               ms.Tensor(weights)).asnumpy()
    seq, mask = encode_inputs(model, t["images"], text_ids=t["text_ids"], text_mask=t["text_mask"])
    assert seq.shape[1] == cfg.text.max_len + model.image_encoder.num_tokens + 1   # question + image tokens
    logits = model.text_decoder(ms.Tensor(dec_input), seq, mask).asnumpy().astype(np.float64)
    np.testing.assert_allclose(loss, reference_loss(logits, target, weights, 0.0), rtol=1e-5)


def test_teacher_forcing_arrays_frame_generated_rows():
    tokens = np.array([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 6, 7, 8]], np.int32)   # last row: no EOS
    inputs, targets, weights = teacher_forcing_arrays(tokens, BOS, EOS, PAD, 5)
    np.testing.assert_array_equal(inputs, [[BOS, 5, 6, 0, 0], [BOS, 7, 0, 0, 0], [BOS, 5, 6, 7, 8]])
    np.testing.assert_array_equal(targets, [[5, 6, EOS, 0, 0], [7, EOS, 0, 0, 0], [5, 6, 7, 8, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])


def test_repeat_rows_keeps_copies_of_a_row_together():
    x = ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(repeat_rows(x, 2).asnumpy(), [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])


def test_cider_rewards_and_advantages_by_hand():
    refs = [["a red circle", "a red round circle"], ["a blue square", "one blue square"]]
    perfect = cider_scores(["a red circle", "a blue square"], refs, "en")
    disjoint = cider_scores(["green moon", "yellow sun"], refs, "en")
    assert (perfect > 1.0).all() and (disjoint == 0).all()
    # K = 2 samples per image: sample 0 matches a reference, sample 1 equals the greedy caption
    sampled = ["a red circle", "green moon", "yellow sun", "a blue square"]
    greedy = ["green moon", "yellow sun"]
    advantages, rewards, baseline = scst_advantages(sampled, greedy, refs, "en")
    np.testing.assert_array_equal(baseline, [0.0, 0.0])
    assert advantages[0] > 0 and advantages[3] > 0
    assert advantages[1] == 0 and advantages[2] == 0
    np.testing.assert_allclose(rewards[[0, 3]], perfect, rtol=1e-6)   # repeated references leave the idf unchanged


def test_scst_loss_is_minus_advantage_times_sequence_logprob(model, pynative):
    cfg = model.cfg
    k = 2
    x = model_inputs(cfg, batch=2, seed=3)
    sampled = np.array([[5, 6, EOS, PAD], [7, EOS, PAD, PAD], [8, 9, 10, EOS], [5, EOS, PAD, PAD]], np.int32)
    inputs, targets, weights = teacher_forcing_arrays(sampled, BOS, EOS, PAD, cfg.text_decoder.max_len)
    advantages = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    task = SCSTTask(model, has_audio=False, samples=k)
    image = ms.Tensor(x["images"])
    loss = task(image, ms.Tensor(inputs), ms.Tensor(targets), ms.Tensor(weights), ms.Tensor(advantages)).asnumpy()
    seq, mask = encode_inputs(model, image)
    logp = score_sequences(model.text_decoder, np.repeat(seq.asnumpy(), k, 0), np.repeat(mask.asnumpy(), k, 0),
                           sampled, BOS, EOS, PAD)
    np.testing.assert_allclose(loss, -(advantages * logp).mean(), rtol=1e-5)
    zero = task(image, ms.Tensor(inputs), ms.Tensor(targets), ms.Tensor(weights),
                ms.Tensor(np.zeros(4, np.float32))).asnumpy()
    assert zero == 0.0   # every sample as good as the greedy baseline: nothing to learn


def _train_step(model, task, lr=1e-3):
    """A TrainStep updating the text decoder only (fewer parameters: fast in PyNative)."""
    cfg = model_config("tiny", [f"optim.lr={lr}", "optim.warmup_steps=0", "optim.schedule=constant"])
    params = model.text_decoder.trainable_params()
    step = TrainStep(task, build_optimizer(params, cfg.optim, 100), LossScale("none"), 1.0, 1)
    step.set_train(True)
    return step


@pytest.mark.slow
def test_non_finite_scst_loss_skips_the_update_and_finite_steps_raise_the_sample_logprob(pynative):
    model = build_model(model_config("tiny", ["model.text_decoder.memory_layers=0"]).model)
    x = model_inputs(model.cfg, batch=2, seed=6)
    sampled = np.array([[5, 6, EOS], [7, EOS, PAD]], np.int32)
    arrays = [ms.Tensor(a) for a in teacher_forcing_arrays(sampled, BOS, EOS, PAD, model.cfg.text_decoder.max_len)]
    image = ms.Tensor(x["images"])
    step = _train_step(model, SCSTTask(model, has_audio=False, samples=1))
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    loss, finite, _, _ = step(image, *arrays, ms.Tensor(np.array([np.nan, 1.0], np.float32)))
    assert not np.isfinite(loss.asnumpy()) and not bool(finite.asnumpy())
    assert all(np.array_equal(before[p.name], p.asnumpy()) for p in model.trainable_params())
    # advantage +1 on both samples: the loss is -mean log p(sample), and training must make the samples likelier
    losses = [float(step(image, *arrays, ms.Tensor(np.ones(2, np.float32)))[0].asnumpy()) for _ in range(4)]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.slow
def test_closed_vocabulary_vqa_picks_the_highest_scoring_candidate(model, pynative):
    x = model_inputs(model.cfg, batch=2, seed=7, text_len=5)
    generator = TextGenerator(model, _Tokens(), decoding_settings(model_config("tiny"), "vqa"))
    candidates = ["5", "6 7", "9 10 11"]
    answerer = Answerer(generator, candidates)
    np.testing.assert_array_equal(answerer.answer_tokens, [[5, EOS, 0, 0], [6, 7, EOS, 0], [9, 10, 11, EOS]])
    answers = answerer(x["images"], x["text_ids"], x["text_mask"])
    memory, mask = generator.memory(x["images"], question_ids=x["text_ids"], question_mask=x["text_mask"])
    for b in range(2):
        scores = [score_sequences(model.text_decoder, memory.asnumpy()[b:b + 1], mask.asnumpy()[b:b + 1],
                                  answerer.answer_tokens[c:c + 1], BOS, EOS, PAD)[0] for c in range(3)]
        assert answers[b] == candidates[int(np.argmax(scores))]


class _FixedGenerator(TextGenerator):
    """A TextGenerator whose decoding always returns the given token rows (the memory is not used)."""

    def __init__(self, rows):
        self.tokenizer, self.rows = _Tokens(), np.array(rows, np.int32)
        self.special = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)

    def memory(self, *inputs):
        return None, None

    def generate(self, memory, mask, **overrides):
        return self.rows, np.zeros(len(self.rows))


def test_rationale_answers_are_the_text_after_the_first_separator():
    rows = [[5, 6, MASK, 7, EOS, PAD],      # rationale "5 6", answer "7"
            [5, MASK, 8, 9, EOS, PAD],      # a two-token answer
            [5, 6, 7, EOS, PAD, PAD],       # no separator before EOS: no answer
            [5, 6, EOS, MASK, 7, EOS]]      # a separator after EOS does not count
    answerer = Answerer(_FixedGenerator(rows), rationale=True)
    assert answerer.respond(None, None, None) == [("7", "5 6"), ("8 9", "5"), ("", "5 6 7"), ("", "5 6")]
    assert answerer(None, None, None) == ["7", "8 9", "", ""]
    plain = Answerer(_FixedGenerator(rows))   # a model without rationales: the whole text is the answer
    assert plain.respond(None, None, None)[0] == ("5 6 " + str(MASK) + " 7", None)


@pytest.mark.slow
def test_closed_vocabulary_with_rationale_scores_the_candidates_after_the_generated_rationale(model, pynative):
    x = model_inputs(model.cfg, batch=2, seed=8, text_len=5)
    generator = TextGenerator(model, _Tokens(), decoding_settings(model_config("tiny"), "vqa"))
    candidates = ["5", "6 7", "9 10 11"]
    answerer = Answerer(generator, candidates, rationale=True)
    memory, mask = generator.memory(x["images"], question_ids=x["text_ids"], question_mask=x["text_mask"])
    generated = generator.generate(memory, mask)[0]
    answers = answerer(x["images"], x["text_ids"], x["text_mask"])
    for b in range(2):
        rationale, _ = answerer.split(generated[b])
        keep = model.text_decoder.max_len - answerer.answer_tokens.shape[1]   # room left by the widest candidate
        prefix = (list(rationale) + [MASK])[-keep:]
        rows = [prefix + [t for t in c if t != PAD] for c in answerer.answer_tokens]
        scores = [score_sequences(model.text_decoder, memory.asnumpy()[b:b + 1], mask.asnumpy()[b:b + 1],
                                  np.array([r], np.int32), BOS, EOS, PAD)[0] for r in rows]
        assert answers[b] == candidates[int(np.argmax(scores))]
    # the candidates' ranking depends on the prefix: with and without one, the scores differ
    plain = generator.rank(memory, mask, answerer.answer_tokens)
    prefixed = generator.rank(memory, mask, answerer.answer_tokens, [[5, 6, MASK]] * 2)
    assert not np.allclose(plain, prefixed)


def test_a_prefix_longer_than_the_decoder_loses_its_start(model, pynative):
    x = model_inputs(model.cfg, batch=1, seed=9, text_len=5)
    generator = TextGenerator(model, _Tokens(), decoding_settings(model_config("tiny"), "vqa"))
    memory, mask = generator.memory(x["images"], question_ids=x["text_ids"], question_mask=x["text_mask"])
    candidate = np.array([[9, EOS]], np.int32)
    length = model.text_decoder.max_len
    long_prefix = list(range(5, 5 + length)) + [MASK]
    kept = long_prefix[len(long_prefix) - (length - 2):]
    expected = score_sequences(model.text_decoder, memory.asnumpy(), mask.asnumpy(),
                               np.array([kept + [9, EOS]], np.int32), BOS, EOS, PAD)
    np.testing.assert_allclose(generator.rank(memory, mask, candidate, [long_prefix])[:, 0], expected)


def test_answer_scores_count_the_questions_left_unanswered():
    refs = [{"id": "q0", "answers": ["红色"], "lang": "zh"}, {"id": "q1", "answers": ["2"], "lang": "zh"},
            {"id": "q2", "answers": ["左边"], "lang": "zh"}]
    scores = answer_scores({0: "红色", 1: "", 2: "右边"}, refs)
    assert scores == {"exact_match": pytest.approx(100 / 3), "n_questions": 3, "unanswered": 1}


def test_answer_scores_report_ofa_confidence_accuracy():
    """Records read from an OFA VQA MindRecord carry answer_scores: evaluation reports their confidence accuracy."""
    refs = [{"id": "q0", "answers": ["red", "blue"], "answer_scores": [1.0, 0.6], "lang": "en"},
            {"id": "q1", "answers": ["2"], "answer_scores": [1.0], "lang": "en"}]
    scores = answer_scores({0: "blue", 1: "3"}, refs)
    assert scores["confidence_accuracy"] == pytest.approx(100 * 0.6 / 2) and scores["n_scored_questions"] == 2
    assert scores["exact_match"] == pytest.approx(50)


def test_answer_list_ranks_normalised_answers_by_frequency():
    refs = [{"answers": ["红色", "红色。"]}, {"answers": ["两"]}, {"answers": ["2", "蓝色"]}, {"answers": ["红色"]}]
    assert answer_list(refs, "zh") == ["红色", "两", "蓝色"]   # 红色 x3, 两 = 2 x2, 蓝色 x1
    assert answer_list(refs, "zh", size=2) == ["红色", "两"]


def test_decoding_settings_read_the_config_and_cap_max_len(tiny_cfg):
    settings = decoding_settings(tiny_cfg, "caption", beam_size=5)
    assert settings["strategy"] == "beam" and settings["beam_size"] == 5
    assert settings["max_len"] == tiny_cfg.model.text_decoder.max_len == 12
    assert decoding_settings(tiny_cfg, "vqa")["strategy"] == "greedy"


@pytest.mark.parametrize("count,wanted,expected", [(200, 16, 16), (8, 16, 8), (7, 4, 4), (157, 16, 16), (0, 16, 1)])
def test_eval_batch_size_is_the_configured_one_whatever_the_count(count, wanted, expected):
    assert eval_batch_size(count, wanted) == expected
