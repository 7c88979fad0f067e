"""Text generation from a trained model: `TextGenerator` encodes [question |] image [| audio] into the text decoder's
memory in one graph, then decodes with `src.inference.generation.generate` (KV cache) or ranks a closed list of
candidate texts with `score_sequences`; `Answerer` turns VQA batches into answers (and rationales).

Shared by the one-call API (src.inference.pipeline), evaluation, SCST training and the MindIR runner
(src.inference.exported_model, which swaps the memory encoder and decode step for exported graphs).
"""
import mindspore as ms
import numpy as np

from src.inference.generation import generate, score_sequences

# The decoding keys of a task's config section (`caption.*`, `vqa.*`; defaults in config/defaults.yaml).
DECODING_KEYS = ("strategy", "beam_size", "length_penalty", "max_len", "min_len", "no_repeat_ngram", "top_k", "top_p",
                 "temperature")


def decoding_settings(cfg, task, **overrides):
    """The `generate` keyword arguments of `task` ("caption" or "vqa"): defaults, then the config's `<task>.*`
    keys, then the non-None `overrides`; max_len is capped at the text decoder's length."""
    settings = {key: cfg[task][key] for key in DECODING_KEYS}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings["max_len"] = min(int(settings["max_len"]), cfg.model.text_decoder.max_len)
    return settings


class TextGenerator:
    """Encode inputs into the text decoder's memory, then generate text or rank candidate texts."""

    def __init__(self, model, tokenizer, settings):
        from src.tasks.caption import MemoryEncoder
        self.model, self.tokenizer, self.settings = model, tokenizer, dict(settings)
        self._make_encoder = MemoryEncoder
        self._encoders = {}
        self.special = dict(bos_id=tokenizer.cls_id, eos_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)

    def memory(self, image, audio=None, frame_mask=None, question_ids=None, question_mask=None):
        """numpy batches -> (memory, mask) Tensors."""
        key = (question_ids is not None, audio is not None)
        if key not in self._encoders:
            self._encoders[key] = self._make_encoder(self.model, *key)
        inputs = ([question_ids, question_mask] if key[0] else []) + [image] + ([audio, frame_mask] if key[1] else [])
        return self._encoders[key](*[ms.Tensor(np.asarray(x)) for x in inputs])

    def generate(self, memory, mask, **overrides):
        """Token rows (B, L) without BOS, ending at EOS (then pad), and their log-probs (B,)."""
        settings = {**self.settings, **overrides}
        return generate(self.model.text_decoder, memory, mask, **self.special, **settings)

    def texts(self, tokens):
        return [self.tokenizer.decode(row) for row in tokens]

    def run(self, image, audio=None, frame_mask=None, question_ids=None, question_mask=None, **overrides):
        """Generated texts of one batch."""
        memory, mask = self.memory(image, audio, frame_mask, question_ids, question_mask)
        return self.texts(self.generate(memory, mask, **overrides)[0])

    def candidate_tokens(self, candidates):
        """Candidate texts -> (C, L) int32 rows `tokens [SEP]`, pad-filled, L <= the decoder length."""
        limit = self.model.text_decoder.max_len
        rows = [self.tokenizer.encode(text, limit + 1)[1:] for text in candidates]
        out = np.full((len(rows), max(len(r) for r in rows)), self.tokenizer.pad_id, np.int32)
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return out

    def rank(self, memory, mask, candidate_tokens, prefixes=None):
        """Log-prob of every candidate for every memory row: float64 (B, C). With `prefixes` (B lists of token ids),
        row b's candidates are scored as continuations of prefixes[b] (whose own log-prob, the same for all of
        them, is included), each prefix cut to its last (decoder length - candidate width) tokens."""
        batch, count = memory.shape[0], len(candidate_tokens)
        memory = np.repeat(memory.asnumpy(), count, 0)
        mask = np.repeat(mask.asnumpy(), count, 0)
        tokens = np.tile(candidate_tokens, (batch, 1))
        if prefixes is not None:
            keep = self.model.text_decoder.max_len - candidate_tokens.shape[1]
            heads = [list(p)[max(len(p) - keep, 0):] for p in prefixes]
            tokens = np.full((batch * count, max(map(len, heads)) + candidate_tokens.shape[1]), self.special["pad_id"],
                             np.int32)
            for b, head in enumerate(heads):   # row b's candidates follow its own prefix directly
                rows = slice(b * count, (b + 1) * count)
                tokens[rows, :len(head)] = head
                tokens[rows, len(head):len(head) + candidate_tokens.shape[1]] = candidate_tokens
        return score_sequences(self.model.text_decoder, memory, mask, tokens, **self.special).reshape(batch, count)


class Answerer:
    """Answers of prepared VQA batches: free generation, or with `answers` (closed vocabulary) the candidate whose
    tokens the decoder gives the highest total log-probability.

    With `rationale` (a model trained with vqa.rationale) the decoder writes `rationale [MASK] answer`: the answer is
    the text after the first [MASK] ("" when none was generated within max_len), and in closed-vocabulary mode the
    candidates are scored as continuations of the generated `rationale [MASK]`. `respond` gives the rationales too.
    """

    def __init__(self, generator, answers=None, rationale=False):
        self.generator = generator
        self.answers = list(answers) if answers else None
        self.answer_tokens = generator.candidate_tokens(self.answers) if self.answers else None
        self.rationale = bool(rationale)

    def __call__(self, image, question_ids, question_mask, audio=None, frame_mask=None):
        return [answer for answer, _ in self.respond(image, question_ids, question_mask, audio, frame_mask)]

    def respond(self, image, question_ids, question_mask, audio=None, frame_mask=None):
        """[(answer, rationale)] of one batch; the rationale is None unless the model writes one."""
        memory, mask = self.generator.memory(image, audio, frame_mask, question_ids, question_mask)
        if not self.rationale and self.answers is None:
            return [(text, None) for text in self.generator.texts(self.generator.generate(memory, mask)[0])]
        if not self.rationale:
            scores = self.generator.rank(memory, mask, self.answer_tokens)
            return [(self.answers[i], None) for i in scores.argmax(1)]
        parts = [self.split(row) for row in self.generator.generate(memory, mask)[0]]
        rationales = [self.generator.tokenizer.decode(rationale) for rationale, _ in parts]
        if self.answers is None:
            return [(self.generator.tokenizer.decode(answer), text) if answer is not None else ("", text)
                    for (_, answer), text in zip(parts, rationales)]
        separator = self.generator.tokenizer.mask_id
        scores = self.generator.rank(memory, mask, self.answer_tokens,
                                     [list(rationale) + [separator] for rationale, _ in parts])
        return [(self.answers[i], text) for i, text in zip(scores.argmax(1), rationales)]

    def split(self, row):
        """Generated tokens -> (rationale tokens, answer tokens or None when no separator came before EOS). Decoding
        pads a row only after its EOS, so the tokens before EOS are all generated ones."""
        eos = self.generator.special["eos_id"]
        row = [int(t) for t in row]
        row = row[:row.index(eos)] if eos in row else row
        separator = self.generator.tokenizer.mask_id
        if separator not in row:
            return row, None
        at = row.index(separator)
        return row[:at], row[at + 1:]
