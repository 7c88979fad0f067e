"""Captioning and VQA task Cells, and the self-critical (SCST) step.

| task          | cross-modal encoder sees      | loss                                                           |
|---------------|-------------------------------|----------------------------------------------------------------|
| CaptionTask   | image [+ audio] (no text)     | label-smoothed cross-entropy of the text decoder               |
| VQATask       | question, image [+ audio]     | label-smoothed cross-entropy of the answer                     |
| SCSTTask      | image [+ audio]               | -(reward - baseline) * log p(sampled caption), mean over samples |

SCST (Rennie et al. 2017): for every image, K captions are sampled on the host; each one's reward is its CIDEr-D
against the image's references and the baseline is the CIDEr-D of the image's greedy caption. `SCSTTask` recomputes
the log-probability of the sampled tokens by teacher forcing inside the graph (so it has gradients) and weighs it by
the advantage. A step whose loss is not finite has non-finite gradients and is skipped by `TrainStep`.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops
from pycocoevalcap.cider.cider import Cider

from src.data.masking import text_generation_targets
from src.metrics.caption import caption_words

from .losses import cross_entropy

AUDIO_INPUTS = ("audio", "frame_mask")


class _GenerationTask(nn.Cell):
    """Encodes [text |] image [| audio] with the shared model; subclasses decode from the fused sequence."""
    base_inputs = ()

    def __init__(self, model, has_audio, label_smoothing=0.0):
        super().__init__(auto_prefix=False)
        self.model = model
        self.has_audio = has_audio
        self.label_smoothing = float(label_smoothing)
        self.input_names = self.base_inputs + (AUDIO_INPUTS if has_audio else ())

    def memory(self, image, audio=None, frame_mask=None, text_ids=None, text_mask=None):
        """The text decoder's memory: (fused sequence, mask)."""
        return encode_inputs(self.model, image, audio, frame_mask, text_ids, text_mask)


def encode_inputs(model, image, audio=None, frame_mask=None, text_ids=None, text_mask=None):
    """Single-modal encoders, then the cross-modal encoder over the given modalities -> (sequence, mask)."""
    text = t_mask = aud = a_mask = None
    if text_ids is not None:
        text, t_mask = model.encode_text(text_ids, text_mask)
    img, i_mask = model.encode_image(image)
    if audio is not None:
        aud, a_mask = model.encode_audio(audio, frame_mask)
    return model.fuse(text, t_mask, img, i_mask, aud, a_mask)


class CaptionTask(_GenerationTask):
    base_inputs = ("image", "dec_input", "dec_target", "dec_weights")

    def construct(self, image, dec_input, dec_target, dec_weights, audio=None, frame_mask=None):
        seq, mask = self.memory(image, audio, frame_mask)
        logits = self.model.text_decoder(dec_input, seq, mask)
        return cross_entropy(logits, dec_target, dec_weights, self.label_smoothing)


class VQATask(_GenerationTask):
    base_inputs = ("question_ids", "question_mask", "image", "dec_input", "dec_target", "dec_weights")

    def construct(self, question_ids, question_mask, image, dec_input, dec_target, dec_weights, audio=None,
                  frame_mask=None):
        seq, mask = self.memory(image, audio, frame_mask, question_ids, question_mask)
        logits = self.model.text_decoder(dec_input, seq, mask)
        return cross_entropy(logits, dec_target, dec_weights, self.label_smoothing)


class SCSTTask(_GenerationTask):
    """Inputs: image (B, ...) and, per image, `samples` sampled captions as teacher-forcing arrays
    (B * samples, L) (rows b * samples + k), their advantages (B * samples,), then audio."""
    base_inputs = ("image", "sample_input", "sample_target", "sample_weights", "advantages")

    def __init__(self, model, has_audio, samples):
        super().__init__(model, has_audio)
        self.samples = int(samples)

    def construct(self, image, sample_input, sample_target, sample_weights, advantages, audio=None,
                  frame_mask=None):
        seq, mask = self.memory(image, audio, frame_mask)
        seq = repeat_rows(seq, self.samples)
        mask = repeat_rows(mask, self.samples)
        logits = self.model.text_decoder(sample_input, seq, mask)
        logp = ops.log_softmax(ops.cast(logits, ms.float32), -1)
        picked = ops.gather_elements(logp, -1, ops.expand_dims(sample_target, -1)).squeeze(-1)
        seq_logp = (picked * sample_weights).sum(-1)
        return -(advantages * seq_logp).mean()


class MemoryEncoder(nn.Cell):
    """The decoder memory for generation as one graph: inputs ([question_ids, question_mask,] image
    [, audio, frame_mask]) -> (sequence, mask)."""

    def __init__(self, model, with_text, has_audio):
        super().__init__(auto_prefix=False)
        self.model, self.with_text, self.has_audio = model, with_text, has_audio

    def construct(self, *inputs):
        text_ids = text_mask = audio = frame_mask = None
        if self.with_text:
            text_ids, text_mask = inputs[0], inputs[1]
            inputs = inputs[2:]
        if self.has_audio:
            audio, frame_mask = inputs[1], inputs[2]
        return encode_inputs(self.model, inputs[0], audio, frame_mask, text_ids, text_mask)


def repeat_rows(x, times):
    """(B, ...) -> (B * times, ...) with each row repeated `times` times in a row (b0, b0, ..., b1, ...)."""
    if times == 1:
        return x
    shape = x.shape
    expanded = ops.broadcast_to(ops.expand_dims(x, 1), (shape[0], times) + shape[1:])
    return expanded.reshape((shape[0] * times,) + shape[1:])


# ------------------------------------------------------------------------------------------ host side of SCST


def reward_tokens(text, lang):
    """Caption -> space-joined tokens for CIDEr-D: the tokenizer's words without punctuation (`caption_words`:
    characters for Chinese, lower-cased words otherwise; no Java, so it is fast enough for every training step).
    `lang` is kept for callers; both languages split the same way."""
    return " ".join(caption_words(text))


def cider_scores(candidates, references, lang="zh"):
    """CIDEr-D of each candidate caption against its own reference list, as a float64 array.

    `candidates` (N,) captions; `references` (N,) lists of captions. The idf comes from the N reference lists, so
    repeating an image's references for several candidates does not change it. Empty candidates score 0.
    """
    gts = {i: [reward_tokens(r, lang) for r in refs] for i, refs in enumerate(references)}
    res = {i: [reward_tokens(c, lang)] for i, c in enumerate(candidates)}
    if not gts:
        return np.zeros(0)
    _, scores = Cider().compute_score(gts, res)
    return np.asarray(scores, np.float64)


def scst_advantages(sampled, greedy, references, lang="zh"):
    """Rewards of `sampled` (B * K captions, rows b * K + k) minus the baseline, the greedy caption's reward.

    `greedy` (B,) captions and `references` (B,) reference lists. Returns (advantages float32 (B * K,),
    sample rewards (B * K,), greedy rewards (B,)), all scored in one CIDEr-D call.
    """
    batch = len(greedy)
    k = len(sampled) // batch
    refs = [references[i // k] for i in range(len(sampled))] + list(references)
    scores = cider_scores(list(sampled) + list(greedy), refs, lang)
    rewards, baseline = scores[:len(sampled)], scores[len(sampled):]
    return (rewards - np.repeat(baseline, k)).astype(np.float32), rewards, baseline


def teacher_forcing_arrays(tokens, bos_id, eos_id, pad_id, max_len):
    """Generated token rows (without BOS; EOS and pad allowed) -> (input, target int32 (N, max_len),
    weights float32 (N, max_len)) for scoring them; a row without EOS (cut at max_len) gets no EOS target."""
    rows = [_teacher_forcing_row(row, bos_id, eos_id, pad_id, max_len) for row in np.asarray(tokens)]
    return tuple(np.stack(column) for column in zip(*rows))


def _teacher_forcing_row(row, bos_id, eos_id, pad_id, max_len):
    row = [int(t) for t in row]
    ended = eos_id in row
    tokens = row[:row.index(eos_id)] if ended else [t for t in row if t != pad_id]
    dec_input, target, weights = text_generation_targets(tokens, np.ones(len(tokens)), bos_id, eos_id, pad_id,
                                                         max_len + 1)
    if not ended:
        target[len(tokens)], weights[len(tokens)] = pad_id, 0.0
    return dec_input[:max_len], target[:max_len], weights[:max_len]


class SCSTBatches:
    """Stands in for a dataset in the Trainer's data stream: every batch of images (column `index` + image
    [+ audio]) from `dataset` comes out with `samples` sampled captions per image as SCSTTask inputs.

    Sampling and the greedy baseline run with the model in eval mode (no dropout) and the current weights;
    `generator` is a `src.inference.pipeline.TextGenerator`, `references` the records of
    `src.data.pretrain_data.read_references` (indexed by `index`), `sampling` the keyword arguments of the sampled
    decoding (top_k, top_p, temperature, max_len).
    """

    def __init__(self, dataset, generator, references, samples, sampling, seed):
        self.dataset, self.generator, self.references = dataset, generator, references
        self.samples, self.sampling, self.seed = int(samples), dict(sampling), int(seed)

    def create_dict_iterator(self, num_epochs=1, output_numpy=True):
        for batch in self.dataset.create_dict_iterator(num_epochs=num_epochs, output_numpy=True):
            yield self.scst_batch(batch)

    def scst_batch(self, batch):
        """A data batch -> the SCSTTask columns."""
        index = np.asarray(batch["index"]).reshape(-1)
        audio = (batch["audio"], batch["frame_mask"]) if "audio" in batch else (None, None)
        model, k = self.generator.model, self.samples
        model.set_train(False)
        try:
            memory, mask = self.generator.memory(batch["image"], *audio)
            greedy, _ = self.generator.generate(memory, mask, strategy="greedy", max_len=self.sampling["max_len"])
            seed = int(np.random.default_rng([self.seed] + index.tolist()).integers(2 ** 31))
            sampled, _ = self.generator.generate(np.repeat(memory.asnumpy(), k, 0), np.repeat(mask.asnumpy(), k, 0),
                                                 strategy="sample", seed=seed, **self.sampling)
        finally:
            model.set_train(True)
        records = [self.references[int(i)] for i in index]
        advantages, _, _ = scst_advantages(
            self.generator.texts(sampled), self.generator.texts(greedy), [r["captions"] for r in records],
            records[0]["lang"])
        special = self.generator.special
        inputs, targets, weights = teacher_forcing_arrays(sampled, special["bos_id"], special["eos_id"],
                                                          special["pad_id"], model.text_decoder.max_len)
        out = {"image": batch["image"], "sample_input": inputs, "sample_target": targets, "sample_weights": weights,
               "advantages": advantages}
        if audio[0] is not None:
            out["audio"], out["frame_mask"] = audio
        return out
