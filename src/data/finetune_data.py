"""Fine-tuning pipelines over MindRecord: captioning, VQA and self-critical (SCST) captioning batches.

Built on `src.data.pretrain_data`: the same epoch permutation per rank (`epoch_indices`), the same per-sample random
streams (`sample_rng(seed, epoch, index)`), the same image transforms and text / audio arrays. Evaluation uses
`pipeline.build_eval_dataset` unchanged.

| builder               | columns (audio columns last, only when the data has audio and data.use_audio is on)      |
|-----------------------|------------------------------------------------------------------------------------------|
| build_caption_dataset | image, dec_input, dec_target, dec_weights [, audio, frame_mask]                          |
| build_vqa_dataset     | question_ids, question_mask, image, dec_input, dec_target, dec_weights [, audio, ...]    |
| build_scst_dataset    | index, image [, audio, frame_mask] (references are looked up by `index` on the host)      |

A caption sample decodes one of its captions, drawn per epoch; a VQA sample one of its answers (so answers given by
several annotators are drawn in proportion to their counts; answers with confidences, `answer_scores` such as OFA's,
in proportion to their confidences: `pick_answer`). With vqa.rationale on, a VQA sample decodes
`rationale [MASK] answer` (one of the record's `rationales`, drawn per epoch; see `rationale_answer_ids`): the model
first describes what the answer rests on, then answers, and `src.inference.pipeline.Answerer` keeps what follows
the separator as the answer.
"""
import json

import numpy as np

from src.data.masking import sample_rng, text_generation_targets
from src.data.pretrain_data import (_check_data, _SampleArrays, _split_captions, open_mindrecord, stored_array,
                                    training_positions, training_samples)
from src.errors import UserError

AUDIO_COLUMNS = ["audio", "frame_mask"]


def finetune_columns(kind, has_audio):
    """The batch columns of `kind` ("caption", "vqa" or "scst"), in order."""
    base = {"caption": ["image", "dec_input", "dec_target", "dec_weights"],
            "vqa": ["question_ids", "question_mask", "image", "dec_input", "dec_target", "dec_weights"],
            "scst": ["index", "image"]}[kind]
    return base + (AUDIO_COLUMNS if has_audio else [])


def check_finetune_data(data_path, cfg, kind):
    """Open the MindRecord for `kind` and check it can feed it; returns (info, has_audio)."""
    info = open_mindrecord(data_path, cfg.data.vocab)
    has_audio = _check_data(info, cfg)
    if kind == "vqa" and not info.meta["has_vqa"]:
        raise UserError(f"MindRecord {data_path} holds no questions; build it from a VQA manifest (lines with "
                        "'question' and 'answers', e.g. data/demo/train_vqa.jsonl)")
    if kind == "vqa" and cfg.vqa.rationale and not info.meta.get("has_rationales", False):
        raise UserError(f"vqa.rationale is on but MindRecord {data_path} has questions without rationales; give every "
                        "manifest line a 'rationales' list and rebuild it, or set vqa.rationale=false")
    if kind in ("caption", "scst") and not info.meta["has_captions"]:
        raise UserError(f"MindRecord {data_path} has samples without captions; captioning needs at least one caption "
                        "per sample (a VQA MindRecord cannot train captioning)")
    return info, has_audio


def _build(kind, samples, data_path, cfg, batch_size, epoch, rank, world, start_batch):
    info, has_audio = check_finetune_data(data_path, cfg, kind)
    positions = training_positions(info, cfg, batch_size, epoch, rank, world, start_batch)
    data = training_samples(info, cfg, samples(has_audio, info.meta), positions)
    data = data.batch(batch_size, drop_remainder=True, num_parallel_workers=cfg.data.workers)
    return data.project(finetune_columns(kind, has_audio))


def build_caption_dataset(data_path, cfg, tokenizer, batch_size, epoch, rank=0, world=1, start_batch=0):
    """Caption fine-tuning batches for one epoch on rank `rank` of `world`, from batch `start_batch` on."""
    return _build("caption", lambda audio, _: _CaptionSample(cfg, tokenizer, epoch, audio), data_path, cfg, batch_size,
                  epoch, rank, world, start_batch)


def build_vqa_dataset(data_path, cfg, tokenizer, batch_size, epoch, rank=0, world=1, start_batch=0):
    """VQA fine-tuning batches: the question in the text slot, one of the answers as the decoder target."""
    def samples(audio, meta):
        return _VQASample(cfg, tokenizer, epoch, audio, scored=bool(meta.get("has_answer_scores", False)))
    return _build("vqa", samples, data_path, cfg, batch_size,
                  epoch, rank, world, start_batch)


def build_scst_dataset(data_path, cfg, tokenizer, batch_size, epoch, rank=0, world=1, start_batch=0):
    """Self-critical batches: images (and audio) with their record index, for sampling on the host."""
    return _build("scst", lambda audio, _: _ImageOnlySample(cfg, tokenizer, audio), data_path, cfg, batch_size,
                  epoch, rank, world, start_batch)


def dataset_factory(build, cfg, tokenizer, dist):
    """(epoch, start_batch) -> `build(cfg.data.train, ...)` batches of this rank: what the Trainer's streams take."""
    def make(epoch, start_batch):
        return build(cfg.data.train, cfg, tokenizer, cfg.train.batch_size, epoch, rank=dist.rank,
                     world=dist.world_size, start_batch=start_batch)
    return make


class _ImageOnlySample(_SampleArrays):
    """Python map: the record index (and audio arrays); the image comes from the vision map."""

    def __init__(self, cfg, tokenizer, has_audio):
        super().__init__(cfg, tokenizer, has_audio)
        self.decoder_len = cfg.model.text_decoder.max_len
        self.input_columns = ["index"] + self.extra_inputs() + (["audio", "audio_frames"] if has_audio else [])
        self.output_columns = ["index"] + self.extra_outputs() + (AUDIO_COLUMNS if has_audio else [])

    def extra_inputs(self):
        return []

    def extra_outputs(self):
        return []

    def columns(self, index, rest):
        return ()

    def __call__(self, index, *rest):
        out = (index,) + tuple(self.columns(index, rest))
        if self.has_audio:
            out += self.audio(rest[-2], rest[-1])
        return out

    def targets(self, ids):
        """Decoder (input, target, weights) of stored [CLS] .. [SEP] ids."""
        return text_generation_targets(ids, np.ones(len(ids)), self.cls_id, self.sep_id, self.pad_id,
                                       self.decoder_len)


class _CaptionSample(_ImageOnlySample):
    def __init__(self, cfg, tokenizer, epoch, has_audio):
        self.seed, self.epoch = cfg.run.seed, epoch
        super().__init__(cfg, tokenizer, has_audio)

    def extra_inputs(self):
        return ["caption_ids", "caption_lens"]

    def extra_outputs(self):
        return ["dec_input", "dec_target", "dec_weights"]

    def columns(self, index, rest):
        captions = _split_captions(rest[0], rest[1])
        rng = sample_rng(self.seed, self.epoch, int(index))
        return self.targets(captions[int(rng.integers(len(captions)))])


class _VQASample(_ImageOnlySample):
    """One question: its ids and one of its answers (with vqa.rationale, `rationale [MASK] answer`) as decoder
    arrays."""

    def __init__(self, cfg, tokenizer, epoch, has_audio, scored=False):
        self.seed, self.epoch, self.tokenizer = cfg.run.seed, epoch, tokenizer
        self.rationale, self.scored = bool(cfg.vqa.rationale), scored
        super().__init__(cfg, tokenizer, has_audio)

    def extra_inputs(self):
        return (["question_ids", "answers"] + (["rationales"] if self.rationale else [])
                + (["answer_scores"] if self.scored else []))

    def extra_outputs(self):
        return ["question_ids", "question_mask", "dec_input", "dec_target", "dec_weights"]

    def columns(self, index, rest):
        answers = json.loads(str(rest[1]))
        if not answers:
            raise UserError(f"VQA record {int(index)} has no answer; training needs every question answered")
        rng = sample_rng(self.seed, self.epoch, int(index))
        scores = json.loads(str(rest[2 + self.rationale])) if self.scored else []
        answer = pick_answer(answers, scores, rng)
        question = stored_array(rest[0], np.int32)
        answer_ids = self.tokenizer.encode(answer, self.decoder_len + 1)
        if self.rationale:
            rationales = json.loads(str(rest[2]))
            if not rationales:
                raise UserError(f"VQA record {int(index)} has no rationale; vqa.rationale training needs one for "
                                "every question")
            rationale = self.tokenizer.encode(rationales[int(rng.integers(len(rationales)))], self.decoder_len + 1)
            answer_ids = rationale_answer_ids(rationale, answer_ids, self.tokenizer.mask_id, self.decoder_len + 1)
        return self.text(question) + self.targets(answer_ids)


def pick_answer(answers, scores, rng):
    """One of `answers`, drawn with `rng`: in proportion to `scores` (confidences, one per answer) when given and not
    all zero, else uniformly (repeated answers then weigh by their count)."""
    total = float(sum(scores)) if scores else 0.0
    if total <= 0:
        return answers[int(rng.integers(len(answers)))]
    return answers[int(rng.choice(len(answers), p=np.asarray(scores, dtype=np.float64) / total))]


def rationale_answer_ids(rationale_ids, answer_ids, separator_id, limit):
    """`[CLS] rationale [SEP]` and `[CLS] answer [SEP]` ids -> `[CLS] rationale <separator> answer [SEP]`, at most
    `limit` ids long. The rationale's end is cut first, so the answer is cut only when it does not fit on its own."""
    answer = answer_ids[1:-1][:limit - 3]
    rationale = rationale_ids[1:-1][:limit - 3 - len(answer)]
    return np.concatenate([answer_ids[:1], rationale, [separator_id], answer, answer_ids[-1:]]).astype(np.int32)
