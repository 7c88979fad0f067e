"""Checkpoints: atomic step directories, integrity checks, pruning, strict loading into a net, RNG state, SIGKILL."""
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.weights import checkpoint as ckpt
from src.weights.checkpoint import (CheckpointManager, add_prefix, capture_rng_state, load_checkpoint, load_into,
                                    restore_rng_state, save_checkpoint, strip_prefix)
from src.errors import UserError
from tests.helpers import ROOT


def sample_tensors():
    return {
        "enc.w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "enc.h": np.array([0.5, -1.25, 3.0], np.float16),
        "step_count": np.array(41, np.int64),
        "enc.p": ms.Parameter(ms.Tensor(np.array([1.0, 2.0], np.float32)), name="some_other_name"),
        "enc.bf": ms.Tensor(np.array([1.5, -2.0, 0.25], np.float32), ms.bfloat16),
    }


def make_writable(path):
    os.chmod(path, 0o600)  # MindSpore leaves its files read-only


def weights_of(path):
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        return os.path.join(path, json.load(f)["weights_file"])


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_round_trip_keeps_values_dtypes_and_meta(tmp_path, fmt):
    path = save_checkpoint(tmp_path / "step_00000007", sample_tensors(), {"epoch": 2, "pos": [3, 4]}, fmt, step=7)
    tensors, meta = load_checkpoint(path)
    assert meta == {"epoch": 2, "pos": [3, 4], "step": 7}
    assert sorted(tensors) == ["enc.bf", "enc.h", "enc.p", "enc.w", "step_count"]
    assert tensors["enc.w"].dtype == ms.float32
    np.testing.assert_array_equal(tensors["enc.w"].asnumpy(), np.arange(6, dtype=np.float32).reshape(2, 3) / 7)
    assert tensors["enc.h"].dtype == ms.float16
    np.testing.assert_array_equal(tensors["enc.h"].asnumpy(), np.array([0.5, -1.25, 3.0], np.float16))
    assert tensors["step_count"].dtype == ms.int64 and int(tensors["step_count"].asnumpy()) == 41
    np.testing.assert_array_equal(tensors["enc.p"].asnumpy(), [1.0, 2.0])
    assert tensors["enc.bf"].dtype == ms.bfloat16
    np.testing.assert_array_equal(tensors["enc.bf"].astype(ms.float32).asnumpy(), [1.5, -2.0, 0.25])

    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    weights = os.path.join(path, f"weights.{fmt}")
    with open(weights, "rb") as f:
        assert state["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert (state["format_version"], state["step"], state["weights_file"]) == (1, 7, f"weights.{fmt}")
    assert (state["size_bytes"], state["num_tensors"]) == (os.path.getsize(weights), 5)
    assert sorted(os.listdir(tmp_path)) == ["step_00000007"]


def test_plain_files_load_with_empty_meta(tmp_path):
    ms.save_checkpoint(nn.Dense(3, 2), str(tmp_path / "net.ckpt"))
    tensors, meta = load_checkpoint(str(tmp_path / "net.ckpt"))
    assert meta == {} and sorted(tensors) == ["bias", "weight"] and tuple(tensors["weight"].shape) == (2, 3)


def test_page_cache_does_not_count_as_used_memory(tmp_path, monkeypatch):
    """MindSpore 2.10 compares a .ckpt file with *free* memory (SC_AVPHYS_PAGES); on a machine whose memory is page
    cache (after writing large files) it refused a 0.9 GB file with 22 GiB available. Free pages are made to read 1
    here: the file still loads, because the check uses MemAvailable."""
    ms.save_checkpoint(nn.Dense(64, 64), str(tmp_path / "net.ckpt"))  # 16 KiB, more than one page
    real_sysconf = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real_sysconf(name))
    from mindspore.train import serialization
    with pytest.raises(Exception, match="exceeds current available memory"):
        ms.load_checkpoint(str(tmp_path / "net.ckpt"))  # the upstream check, as it stands
    tensors, _ = load_checkpoint(str(tmp_path / "net.ckpt"))
    assert sorted(tensors) == ["bias", "weight"]
    assert serialization._get_available_memory() == 1 * real_sysconf("SC_PAGE_SIZE")  # restored after loading


def test_a_file_larger_than_available_memory_is_refused_as_such(tmp_path, monkeypatch):
    ms.save_checkpoint(nn.Dense(3, 2), str(tmp_path / "net.ckpt"))
    monkeypatch.setattr(ckpt, "available_memory_bytes", lambda: 10)
    with pytest.raises(UserError, match=r"is read whole into memory, but only 0.00 GiB is available") as err:
        load_checkpoint(str(tmp_path / "net.ckpt"))
    assert str(tmp_path / "net.ckpt") in str(err.value) and "corrupt" not in str(err.value)


def test_available_memory_is_read_from_meminfo():
    with open("/proc/meminfo") as f:
        line = next(x for x in f if x.startswith("MemAvailable:"))
    assert abs(ckpt.available_memory_bytes() - int(line.split()[1]) * 1024) < 2**30


@pytest.mark.parametrize("name", ["junk.ckpt", "junk.safetensors"])
def test_garbage_plain_file_raises_user_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(UserError, match="corrupt, truncated") as err:
        load_checkpoint(str(path))
    assert str(path) in str(err.value)


def test_unknown_or_missing_paths_raise_user_error(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown checkpoint file type"):
        load_checkpoint(str(tmp_path / "w.bin"))
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.ckpt"))
    with pytest.raises(UserError, match="no state.json"):
        load_checkpoint(str(tmp_path))


def test_truncated_weights_name_the_older_checkpoint(tmp_path, caplog):
    manager = CheckpointManager(tmp_path / "ck", keep_last=3)
    first = manager.save(1, {"w": np.ones(1000, np.float32)}, {})
    second = manager.save(2, {"w": np.full(1000, 2, np.float32)}, {})
    weights = weights_of(second)
    make_writable(weights)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) - 100)
    with pytest.raises(UserError, match="truncated or corrupt") as err:
        load_checkpoint(second)
    assert weights in str(err.value) and f"use the older checkpoint {first} instead" in str(err.value)
    assert manager.latest() == second
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        assert manager.latest_valid() == first
    assert "step_00000002" in caplog.text and "truncated" in caplog.text
    np.testing.assert_array_equal(load_checkpoint(manager.latest_valid())[0]["w"].asnumpy(), np.ones(1000))


def test_flipped_byte_fails_the_sha256_check(tmp_path):
    path = save_checkpoint(tmp_path / "step_00000003", {"w": np.zeros(500, np.float32)}, step=3)
    weights = weights_of(path)
    make_writable(weights)
    with open(weights, "r+b") as f:
        f.seek(os.path.getsize(weights) - 10)
        f.write(b"\x01")
    with pytest.raises(UserError, match="is corrupt: its sha256 differs"):
        load_checkpoint(path)


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=3)
    first = manager.save(1, {"w": np.ones(4, np.float32)}, {"tag": "old"})

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        manager.save(2, {"w": np.full(4, 2, np.float32)}, {})
    with pytest.raises(OSError, match="simulated crash"):
        manager.save(1, {"w": np.full(4, 9, np.float32)}, {"tag": "new"})  # would replace step 1
    monkeypatch.undo()
    assert manager.list() == [(1, first)] and manager.latest() == first
    tensors, meta = load_checkpoint(first)
    assert meta == {"tag": "old", "step": 1}
    np.testing.assert_array_equal(tensors["w"].asnumpy(), np.ones(4))


def test_leftover_tmp_dirs_are_ignored_then_cleaned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    first = manager.save(1, {"w": np.ones(4, np.float32)}, {})
    leftover = tmp_path / "step_00000002.tmp-99999"   # a writer killed half-way
    leftover.mkdir()
    (leftover / "weights.ckpt").write_bytes(b"\x0a\x05partial")
    (leftover / "state.json").write_text("{}")
    assert manager.list() == [(1, first)] and manager.latest() == first
    manager.save(3, {"w": np.ones(4, np.float32)}, {})
    assert sorted(os.listdir(tmp_path)) == ["step_00000001", "step_00000003"]


def test_replacing_an_existing_step_directory(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(5, {"w": np.ones(4, np.float32)}, {"run": 1})
    path = manager.save(5, {"w": np.full(4, 3, np.float32)}, {"run": 2})
    tensors, meta = load_checkpoint(path)
    assert meta == {"run": 2, "step": 5}
    np.testing.assert_array_equal(tensors["w"].asnumpy(), np.full(4, 3))
    assert sorted(os.listdir(tmp_path)) == ["step_00000005"]


def test_keep_last_prunes_but_never_the_new_one(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, fmt="safetensors")
    for step in (1, 2, 3, 4):
        manager.save(step, {"w": np.full(2, step, np.float32)}, {})
    assert [step for step, _ in manager.list()] == [3, 4]
    manager.save(2, {"w": np.zeros(2, np.float32)}, {})   # older than the kept ones, but just written
    assert [step for step, _ in manager.list()] == [2, 3, 4]
    assert manager.latest() == str(tmp_path / "step_00000004")
    assert sorted(os.listdir(tmp_path / "step_00000004")) == ["state.json", "weights.safetensors"]


def test_manager_argument_errors(tmp_path):
    with pytest.raises(UserError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(UserError, match="'pt' is unknown"):
        CheckpointManager(tmp_path, fmt="pt")
    assert CheckpointManager(tmp_path / "none").latest() is None
    assert CheckpointManager(tmp_path / "none").latest_valid() is None


class TinyNet(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = nn.Dense(3, 2)
        self.scale = ms.Parameter(ms.Tensor(np.array([1.0], np.float32)), name="scale")


def net_tensors():
    return {"proj.weight": np.arange(6, dtype=np.float16).reshape(2, 3), "proj.bias": np.array([7.0, 8.0], np.float32),
            "scale": np.array([0.5], np.float32)}


def test_load_into_sets_values_and_casts_dtype():
    net = TinyNet()
    assert load_into(net, net_tensors()) == ([], [])
    assert net.proj.weight.dtype == ms.float32
    np.testing.assert_array_equal(net.proj.weight.asnumpy(), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), [7.0, 8.0])
    np.testing.assert_array_equal(net.scale.asnumpy(), [0.5])


def test_load_into_strict_missing_and_unexpected_load_nothing():
    net = TinyNet()
    initial_bias = net.proj.bias.asnumpy().copy()
    tensors = net_tensors()
    del tensors["scale"]
    tensors["adam_m.proj.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(UserError) as err:
        load_into(net, tensors, source="run/step_00000010")
    message = str(err.value)
    assert message.startswith("run/step_00000010 does not match the model")
    assert "1 model parameter(s) missing from the checkpoint (scale)" in message
    assert "1 checkpoint key(s) unknown to the model (adam_m.proj.weight)" in message
    assert "--allow_missing_keys" in message
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), initial_bias)   # nothing loaded

    assert load_into(net, tensors, strict=False) == (["scale"], ["adam_m.proj.weight"])
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), [7.0, 8.0])
    np.testing.assert_array_equal(net.scale.asnumpy(), [1.0])


def test_init_skips_the_training_state_mindspore_cells_write(tmp_path):
    """adam moments, global_step, the dynamic loss-scale cell's keys and pipeline accumulators are not model keys."""
    tensors = net_tensors()
    for key in ("adam_m.proj.weight", "adam_v.proj.weight", "accu_grads.proj.weight"):
        tensors[key] = np.zeros((2, 3), np.float32)
    for key in ("global_step", "scale_sense", "current_iterator_step", "last_overflow_iterator_step"):
        tensors[key] = np.array([1], np.int32)
    save_checkpoint(str(tmp_path / "c"), tensors)
    net = TinyNet()
    assert ckpt.init_from_checkpoint(net, str(tmp_path / "c")) == []
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), [7.0, 8.0])


def test_init_of_a_model_with_step_dropout_ignores_the_step_counter(tmp_path):
    """The trainer gives every dropout layer a step-counter Parameter (dropout_step) before checkpoint.init runs;
    checkpoints never hold it, so fine-tuning a model with dropout from any checkpoint must not call it missing."""
    from src.engine.trainer import use_step_dropout
    from src.models.opt import build_model
    from tests.helpers import model_config
    cfg = model_config("tiny", ["model.dropout=0.1"]).model
    source = build_model(cfg)
    save_checkpoint(str(tmp_path / "c"), {p.name: p for p in source.get_parameters()})
    model = build_model(cfg)
    assert use_step_dropout([model], 0, 0) is not None and "dropout_step" in model.parameters_dict()
    assert ckpt.init_from_checkpoint(model, str(tmp_path / "c")) == []
    name = "text_encoder.word_embeddings.embedding_table"
    np.testing.assert_array_equal(model.parameters_dict()[name].asnumpy(), source.parameters_dict()[name].asnumpy())


def test_init_of_an_original_opt_file_says_to_convert_it(tmp_path):
    path = str(tmp_path / "OPT_1-38_136.ckpt")
    ms.save_checkpoint([{"name": "uniter.img_embeddings.vit.norm.gamma", "data": ms.Tensor(np.ones(3, np.float32))},
                        {"name": "txt_output.LinearEmbedding.bias", "data": ms.Tensor(np.ones(3, np.float32))}], path)
    with pytest.raises(UserError, match=r"convert it first: python -m src.weights.convert --source zidongtaichu "
                                        r".* --config config/model/opt_1b_released.yaml --out <dir>"):
        ckpt.init_from_checkpoint(TinyNet(), path)
    ms.save_checkpoint([{"name": "uniter.img_embeddings.pos_linear.bias", "data": ms.Tensor(np.ones(3, np.float32))}],
                       path)
    with pytest.raises(UserError, match=r"--source modelzoo .* --config config/model/opt_modelzoo_caption.yaml"):
        ckpt.init_from_checkpoint(TinyNet(), path)


def test_load_into_ignore_prefixes_skip_both_sides():
    net = TinyNet()
    tensors = net_tensors()
    del tensors["scale"]
    tensors["adam_m.proj.weight"] = np.zeros((2, 3), np.float32)
    assert load_into(net, tensors, ignore=("adam_", "scale")) == ([], [])
    np.testing.assert_array_equal(net.proj.bias.asnumpy(), [7.0, 8.0])
    assert load_into(net, {"proj.weight": np.ones((2, 3))}, ignore="proj.b", strict=False) == (["scale"], [])


def test_load_into_shape_mismatch_names_key_and_shapes():
    tensors = net_tensors()
    tensors["proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(UserError, match=r"'proj.weight' has shape \(3, 3\) but the model's parameter has shape "
                                        r"\(2, 3\)"):
        load_into(TinyNet(), tensors, strict=False)


def test_prefix_hint_and_prefix_helpers():
    prefixed = add_prefix(net_tensors(), "model.")
    assert sorted(prefixed) == ["model.proj.bias", "model.proj.weight", "model.scale"]
    with pytest.raises(UserError, match=r"differ by the prefix 'model.': use strip_prefix\(tensors, 'model.'\)"):
        load_into(TinyNet(), prefixed)
    assert load_into(TinyNet(), strip_prefix(prefixed, "model.")) == ([], [])
    assert sorted(strip_prefix({"model.a": 1, "b": 2}, "model.")) == ["a", "b"]
    with pytest.raises(UserError, match="'a' appears both with and without the prefix 'model.'"):
        strip_prefix({"a": 1, "model.a": 2}, "model.")


def test_key_report_lists_at_most_ten_names():
    tensors = net_tensors()
    tensors.update({f"extra.{i:02d}": np.zeros(1, np.float32) for i in range(15)})
    with pytest.raises(UserError) as err:
        load_into(TinyNet(), tensors)
    assert "15 checkpoint key(s) unknown to the model (extra.00, extra.01" in str(err.value)
    assert "extra.09, ... and 5 more)" in str(err.value) and "extra.10" not in str(err.value)


def test_rng_state_round_trips_through_json():
    random.seed(3)
    np.random.seed(4)
    np.random.randn()   # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = json.loads(json.dumps(capture_rng_state()))
    expected = ([random.random(), random.gauss(0, 1)], np.random.randn(3), np.random.randint(0, 1000, 4))
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(state)
    assert [random.random(), random.gauss(0, 1)] == expected[0]
    np.testing.assert_array_equal(np.random.randn(3), expected[1])
    np.testing.assert_array_equal(np.random.randint(0, 1000, 4), expected[2])


WRITER = """
import sys
import numpy as np
from src.weights.checkpoint import CheckpointManager

manager = CheckpointManager(sys.argv[1], keep_last=2, fmt=sys.argv[2])
big = np.random.default_rng(0).standard_normal(5 * 1024 * 1024).astype(np.float32)   # 20 MB
for step in range(1, 100000):
    big[0] = step
    manager.save(step, {"big": big, "small": np.array([step], np.int64)}, {"seen": step})
    print(step, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_sigkill_at_a_random_moment_leaves_a_valid_checkpoint(tmp_path, fmt):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    directory = tmp_path / "ck"
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3")
    proc = subprocess.Popen([sys.executable, str(script), str(directory), fmt], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first_line = proc.stdout.readline()
        assert first_line.strip() == "1", "the writer died before its first checkpoint"
        delay = random.uniform(0.0, 0.6)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read().split()
    finally:
        proc.kill()
        proc.wait()
    last_reported = int(rest[-1]) if rest else 1

    manager = CheckpointManager(directory, keep_last=2, fmt=fmt)
    path = manager.latest_valid()
    assert path == manager.latest(), f"newest checkpoint corrupt after a kill {delay:.3f} s in"
    tensors, meta = load_checkpoint(path)
    step = meta["step"]
    assert step in (last_reported, last_reported + 1) and meta["seen"] == step
    big = tensors["big"].asnumpy()
    assert big.shape == (5 * 1024 * 1024,) and big[0] == step and int(tensors["small"].asnumpy()[0]) == step
    np.testing.assert_array_equal(big[1:], np.random.default_rng(0).standard_normal(5 * 1024 * 1024)
                                  .astype(np.float32)[1:])

    manager.save(step + 1, {"big": big}, {})   # a restarted writer cleans whatever the kill left behind
    assert sorted(os.listdir(directory)) == [f"step_{step:08d}", f"step_{step + 1:08d}"]
