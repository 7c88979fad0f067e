"""The compile-cache key (src.engine.context.compile_cache_key): settings that do not change the graphs (data paths,
train.steps, the learning-rate schedule, outputs) leave it alone; model shapes, the vocabulary's content, unknown
keys and the trainer's graph signature change it."""
import os

import mindspore as ms
import pytest

from src.config import load_config
from src.engine.context import compile_cache_key, enable_compile_cache
from tests.helpers import ROOT

TINY = os.path.join(ROOT, "config", "pretrain", "tiny.yaml")


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "a" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nred\n", encoding="utf-8")
    return path


def key(vocab, *overrides):
    cfg = load_config(TINY, [f"data.vocab={vocab}", "data.train=a/train.mindrecord", "model.text.vocab_size=6",
                             *overrides])
    return compile_cache_key(cfg, {"tasks": {"mlm": ["MLMTask", ["text_ids"]]}})


def test_settings_outside_the_graphs_keep_the_key(vocab, tmp_path):
    base = key(vocab)
    copy = tmp_path / "elsewhere" / "vocab.txt"
    copy.parent.mkdir()
    copy.write_bytes(vocab.read_bytes())
    assert key(copy, "data.train=/other/place/train.mindrecord", "data.val=v.mindrecord", "train.steps=12345",
               "train.eval_every=7", "optim.lr=0.5", "optim.end_lr=0.01", "optim.warmup_steps=9",
               "optim.schedule=linear", "run.output_dir=/elsewhere", "run.log_every=3", "checkpoint.every=2",
               "checkpoint.resume=auto", "data.workers=3") == base


@pytest.mark.parametrize("override", ["model.cross.hidden=64", "model.text.layers=2", "model.text.vocab_size=7",
                                      "train.batch_size=8", "optim.weight_decay=0.5", "run.seed=3",
                                      "pretrain.mlm_prob=0.2"])
def test_graph_settings_change_the_key(vocab, override):
    assert key(vocab, override) != key(vocab)


def test_vocabulary_content_and_graph_signature_change_the_key(vocab):
    base = key(vocab)
    cfg = load_config(TINY, [f"data.vocab={vocab}", "data.train=a/train.mindrecord", "model.text.vocab_size=6"])
    assert compile_cache_key(cfg, {"tasks": {"mlm": ["MLMTask", ["text_ids", "audio"]]}}) != base
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nblue\n", encoding="utf-8")
    assert key(vocab) != base


def test_enable_compile_cache_names_a_folder_per_key(vocab, tmp_path):
    cfg = load_config(TINY, [f"data.vocab={vocab}", f"run.compile_cache_dir={tmp_path / 'cache'}",
                             "model.text.vocab_size=6"])
    try:
        folder = enable_compile_cache(cfg)
        assert os.path.dirname(folder) == str(tmp_path / "cache")
        assert enable_compile_cache(cfg.with_updates({"train.steps": 99})) == folder
        assert enable_compile_cache(cfg.with_updates({"model.cross.layers": 3})) != folder
        assert enable_compile_cache(cfg.with_updates({"run.compile_cache": False})) is None
    finally:  # later tests of this process must not compile into the temporary folder
        ms.set_context(enable_compile_cache=False)


def test_the_validation_datas_graph_shapes_enter_the_signature(monkeypatch):
    """Data paths are not in the key, so what of the validation data shapes an evaluator's graphs (the number of
    records: the last batch; the candidate answers of closed-vocabulary VQA) comes through graph_signature."""
    from types import SimpleNamespace

    import src.data.pretrain_data as pretrain_data
    import src.inference.text_generator as text_generator
    from src.engine.trainer import Trainer
    from src.evaluation import vqa
    monkeypatch.setattr(pretrain_data, "read_references", lambda path: [{"id": i} for i in range(5)])
    monkeypatch.setattr(text_generator, "TextGenerator", lambda *args: None)
    monkeypatch.setattr(text_generator, "Answerer", lambda *args: None)
    monkeypatch.setattr(text_generator, "decoding_settings", lambda *args, **kwargs: {})
    cfg = SimpleNamespace(vqa=SimpleNamespace(rationale=False))
    closed = vqa.validation_evaluator(None, cfg, None, "val.mindrecord", ["1", "2", "3"])
    free = vqa.validation_evaluator(None, cfg, None, "val.mindrecord")
    assert closed.graph_signature == {"records": 5, "answers": 3} and free.graph_signature["answers"] == 0

    def signature(evaluator):
        trainer = SimpleNamespace(steps={}, input_names={}, evaluator=evaluator,
                                  state=SimpleNamespace(get_parameters=lambda: []))
        return Trainer.graph_signature(trainer)["evaluator"]
    assert signature(closed) == {"records": 5, "answers": 3} and signature(closed) != signature(free)
    assert signature(None) is None
