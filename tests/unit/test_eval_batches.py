"""Caption and VQA evaluation run at the configured batch size for any record count: 17 records at batch 4 are read
as batches of 4 (the last one padded with invalid filler rows) and give the predictions of batch 1."""
import json

import numpy as np
import pytest

from demo.data import generate_demo
from src.data.build_mindrecord import build_mindrecord
from src.data.manifest import read_manifest
from src.data.tokenizer import Tokenizer
from src.data.vocab import build_vocab, manifest_texts, write_vocab
from src.evaluation.caption import predict_captions
from src.evaluation.vqa import predict_responses
from tests.helpers import model_config

N = 17


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """17 caption records and 17 VQA records of the demo data, a tiny config and its tokenizer."""
    root = tmp_path_factory.mktemp("eval_batches")
    generate_demo(root, N, 0, 0, image_size=32, audio="tones", workers=1)
    vocab = str(root / "vocab.txt")
    write_vocab(vocab, build_vocab([*manifest_texts(read_manifest(root / "train.jsonl")),
                                   *manifest_texts(read_manifest(root / "train_vqa.jsonl"))]))
    questions = (root / "train_vqa.jsonl").read_text(encoding="utf-8").splitlines()[:N]
    assert len(questions) == N
    (root / "vqa17.jsonl").write_text("\n".join(questions) + "\n", encoding="utf-8")
    build_mindrecord(str(root / "train.jsonl"), str(root / "cap.mindrecord"), vocab, workers=1)
    build_mindrecord(str(root / "vqa17.jsonl"), str(root / "vqa.mindrecord"), vocab, workers=1)
    cfg = model_config("tiny").with_updates({"data.vocab": vocab, "data.workers": 1})
    return cfg, Tokenizer(vocab), str(root / "cap.mindrecord"), str(root / "vqa.mindrecord")


def _describe(image):
    """A prediction that depends on the image alone: its rounded pixel sum."""
    return f"{float(np.asarray(image, np.float64).sum()):.3f}"


class _Generator:
    def __init__(self):
        self.sizes = []

    def run(self, images, *audio, **decoding):
        self.sizes.append(len(images))
        return [_describe(image) for image in images]


class _Answerer:
    def __init__(self):
        self.sizes = []

    def respond(self, images, question_ids, question_mask, *audio):
        self.sizes.append(len(images))
        return [(f"{_describe(image)}|{int(np.asarray(q).sum())}", None) for image, q in zip(images, question_ids)]


def test_caption_evaluation_uses_the_configured_batch(split):
    cfg, tokenizer, captions, _ = split
    by_four, one = _Generator(), _Generator()
    four = predict_captions(by_four, captions, cfg, tokenizer, batch_size=4)
    single = predict_captions(one, captions, cfg, tokenizer, batch_size=1)
    assert by_four.sizes == [4] * 5 and one.sizes == [1] * N   # 17 records: 5 batches of 4, the last padded
    assert four == single and sorted(four) == list(range(N))


def test_vqa_evaluation_uses_the_configured_batch(split):
    cfg, tokenizer, _, questions = split
    by_four, one = _Answerer(), _Answerer()
    four = predict_responses(by_four, questions, cfg, tokenizer, batch_size=4)
    single = predict_responses(one, questions, cfg, tokenizer, batch_size=1)
    assert by_four.sizes == [4] * 5 and one.sizes == [1] * N
    assert four == single and sorted(four) == list(range(N))
    assert len({answer for answer, _ in four.values()}) > 1   # the check can tell records apart
    json.dumps(four)
