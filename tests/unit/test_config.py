"""Tests for src/config.py: inheritance, overrides, type checks, error messages, saving, pickling, CLI helpers."""
import argparse
import glob
import os
import pickle
import re

import pytest
import yaml

from src.config import (
    DEFAULTS_PATH,
    Config,
    add_config_arguments,
    config_from_args,
    load_config,
    main,
    parse_overrides,
    save_config,
)
from src.errors import UserError

DEFAULTS = """\
seed: 42
model:
  width: 64
  cross:
    layers: 2
    heads: 4
  dropout: 0.1
train:
  batch_size: 8
  lr: 1e-4
  milestones: [1, 2]
  betas: [0.9, 0.98]
  tags: []
  resume: null
  amp: false
data:
  name: coco
  lang: zh
  extra: {}
"""

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def defaults(tmp_path):
    return write(tmp_path / "defaults.yaml", DEFAULTS)


def load(path, overrides=(), defaults_path=None):
    return load_config(path, overrides, defaults_path=defaults_path)


# ---------------------------------------------------------------- resolution order


def test_defaults_fill_every_key_and_1e_minus_4_is_a_float(tmp_path, defaults):
    cfg = load(write(tmp_path / "empty.yaml", ""), defaults_path=defaults)
    assert cfg.to_dict() == yaml.safe_load(DEFAULTS.replace("1e-4", "0.0001"))
    assert cfg.train.lr == 0.0001 and isinstance(cfg.train.lr, float)


def test_two_level_base_chain_with_relative_paths_in_different_folders(tmp_path, defaults):
    write(tmp_path / "config/model/tiny.yaml", "model:\n  width: 32\n  cross: {layers: 1}\n")
    write(tmp_path / "config/model/tiny_wide.yaml", "base: tiny.yaml\nmodel:\n  width: 48\n  dropout: 0.0\n")
    run = write(tmp_path / "config/pretrain/demo.yaml", "base: ../model/tiny_wide.yaml\nmodel: {dropout: 0.2}\n")
    cfg = load(run, defaults_path=defaults)
    assert cfg.model.width == 48  # the middle file overrides its base
    assert cfg.model.cross.layers == 1  # from the deepest base
    assert cfg.model.cross.heads == 4  # deep merge keeps the default sibling
    assert cfg.model.dropout == 0.2  # the file itself overrides its bases
    assert "base" not in cfg


def test_list_of_bases_later_overrides_earlier(tmp_path, defaults):
    write(tmp_path / "a.yaml", "seed: 1\ntrain: {batch_size: 2}\n")
    write(tmp_path / "sub/b.yaml", "seed: 2\n")
    run = write(tmp_path / "runs/run.yaml", "base: [../a.yaml, ../sub/b.yaml]\ntrain: {amp: true}\n")
    cfg = load(run, defaults_path=defaults)
    assert (cfg.seed, cfg.train.batch_size, cfg.train.amp) == (2, 2, True)


def test_overrides_beat_file_and_lists_replace(tmp_path, defaults):
    run = write(tmp_path / "run.yaml", "train:\n  batch_size: 4\n  milestones: [5, 6, 7]\n")
    cfg = load(
        run,
        ["train.batch_size=16", "model.cross.layers=4", "train.milestones=[9]", "train.batch_size=32"],
        defaults_path=defaults,
    )
    assert cfg.train.batch_size == 32  # the later of two overrides wins
    assert cfg.model.cross.layers == 4 and cfg.model.cross.heads == 4
    assert cfg.train.milestones == (9,)


def test_parse_overrides_reads_yaml_values():
    parsed = parse_overrides(["train.batch_size=16", "data.name=foo", "train.lr=1e-4", "a.b=x=y", "c=", "d=[1, 2]"])
    expected = {"train.batch_size": 16, "data.name": "foo", "train.lr": 1e-4, "a.b": "x=y", "c": None, "d": [1, 2]}
    assert parsed == expected


# ---------------------------------------------------------------- typing


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("train.lr=3", "train.lr", 3.0),  # int accepted for a float and converted
        ("train.lr='2e-5'", "train.lr", 2e-5),  # float-looking string accepted for a float
        ("model.dropout=.5", "model.dropout", 0.5),
        ("train.betas=[1, '5e-1']", "train.betas", (1.0, 0.5)),  # list elements typed by the first default
        ("train.amp=true", "train.amp", True),
        ("train.resume=/tmp/ckpt", "train.resume", "/tmp/ckpt"),  # null default: optional, any scalar
        ("train.resume=[1, a]", "train.resume", (1, "a")),
        ("train.tags=[x, 1]", "train.tags", ("x", 1)),  # empty default list: elements unchecked
    ],
)
def test_accepted_values(tmp_path, defaults, item, key, expected):
    cfg = load(write(tmp_path / "run.yaml", ""), [item], defaults_path=defaults)
    value = cfg.get(key)
    assert value == expected and type(value) is type(expected)
    if isinstance(expected, tuple):
        assert [type(v) for v in value] == [type(v) for v in expected]


def test_nullable_key_can_be_set_back_to_null(tmp_path, defaults):
    write(tmp_path / "base.yaml", "train: {resume: last.ckpt}\n")
    cfg = load(write(tmp_path / "run.yaml", "base: base.yaml\ntrain: {resume: null}\n"), defaults_path=defaults)
    assert cfg.train.resume is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.batch_size=true", "train.batch_size in --set: expected int, got bool True"),  # bool is not an int
        ("train.batch_size=2.0", "train.batch_size in --set: expected int, got float 2.0"),
        ("train.lr=abc", "train.lr in --set: expected float, got str 'abc'"),
        ("train.lr=false", "train.lr in --set: expected float, got bool False"),
        ("train.amp=1", "train.amp in --set: expected bool, got int 1"),
        ("data.name=7", "data.name in --set: expected str, got int 7"),
        ("train.milestones=3", "train.milestones in --set: expected list, got int 3"),
        ("train.milestones=[1, x]", "train.milestones[1] in --set: expected int, got str 'x'"),
        ("model=3", "model in --set: expected a section (mapping), got int 3"),
        ("model.cross=null", "model.cross in --set: expected a section (mapping), got null"),
        ("train.resume={a: 1}", "train.resume in --set: expected a scalar or a list, got a mapping"),
        ("seed=null", "seed in --set: expected int, got null"),
    ],
)
def test_type_errors(tmp_path, defaults, item, message):
    with pytest.raises(UserError) as info:
        load(write(tmp_path / "run.yaml", ""), [item], defaults_path=defaults)
    assert str(info.value) == message


def test_type_error_in_file_names_the_file(tmp_path, defaults):
    run = write(tmp_path / "x.yaml", "train:\n  lr: abc\n")
    with pytest.raises(UserError, match=f"^train.lr in {run}: expected float, got str 'abc'$"):
        load(run, defaults_path=defaults)


def test_open_section_takes_any_keys_and_merges_deeply(tmp_path, defaults):
    write(tmp_path / "base.yaml", "data:\n  extra: {weights: {itm: 1.0, mlm: 2.0}, note: hi}\n")
    run = write(tmp_path / "run.yaml", "base: base.yaml\ndata:\n  extra: {weights: {mlm: 3.0}}\n")
    cfg = load(run, ["data.extra.new_key=[1, 2]"], defaults_path=defaults)
    assert cfg.data.extra.to_dict() == {"weights": {"itm": 1.0, "mlm": 3.0}, "note": "hi", "new_key": [1, 2]}


# ---------------------------------------------------------------- errors


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path, defaults):
    run = write(tmp_path / "config/pretrain/demo.yaml", "train:\n  bach_size: 3\n")
    with pytest.raises(UserError) as info:
        load(run, defaults_path=defaults)
    assert str(info.value) == f"unknown key 'train.bach_size' in {run}; did you mean 'train.batch_size'?"


def test_unknown_key_reports_the_base_file_it_came_from(tmp_path, defaults):
    base = write(tmp_path / "model/tiny.yaml", "modle:\n  width: 3\n")
    run = write(tmp_path / "run/demo.yaml", "base: ../model/tiny.yaml\n")
    with pytest.raises(UserError, match=f"^unknown key 'modle' in {base}; did you mean 'model'"):
        load(run, defaults_path=defaults)


@pytest.mark.parametrize(
    "item, message",
    [
        ("batch_size=3", "unknown key 'batch_size' in --set; did you mean 'train.batch_size'?"),  # misplaced key
        ("trian.lr=1", "unknown key 'trian.lr' in --set; did you mean 'train.lr'?"),  # typo in a section name
        ("model.cross.layer=1", "unknown key 'model.cross.layer' in --set; did you mean 'model.cross.layers'?"),
    ],
)
def test_unknown_key_suggestions(tmp_path, defaults, item, message):
    with pytest.raises(UserError) as info:
        load(write(tmp_path / "run.yaml", ""), [item], defaults_path=defaults)
    assert str(info.value) == message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path, defaults):
    with pytest.raises(UserError) as info:
        load(write(tmp_path / "run.yaml", ""), ["model.cross.zzzzzzzzz=1"], defaults_path=defaults)
    assert str(info.value) == "unknown key 'model.cross.zzzzzzzzz' in --set; valid keys in 'model.cross': layers, heads"


def test_missing_file_and_missing_base(tmp_path, defaults):
    with pytest.raises(UserError, match=f"^config file not found: {tmp_path / 'nope.yaml'}$"):
        load(tmp_path / "nope.yaml", defaults_path=defaults)
    run = write(tmp_path / "runs/run.yaml", "base: ../model/tny.yaml\n")
    expected = f"config file not found: {tmp_path / 'model/tny.yaml'} (named in 'base:' of {run})"
    with pytest.raises(UserError) as info:
        load(run, defaults_path=defaults)
    assert str(info.value) == expected


def test_missing_defaults_file(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*absent.yaml \\(the defaults tree"):
        load(write(tmp_path / "run.yaml", ""), defaults_path=tmp_path / "absent.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path, defaults):
    run = write(tmp_path / "bad.yaml", "seed: 1\ntrain:\n  batch_size: [1, 2\n  lr: 0.1\n")
    with pytest.raises(UserError) as info:
        load(run, defaults_path=defaults)
    message = str(info.value)
    assert message.startswith(f"YAML syntax error in {run} line 4, column 5: ")
    assert "\n" not in message


@pytest.mark.parametrize("text, got", [("- a\n- b\n", "list ['a', 'b']"), ("just text\n", "str 'just text'")])
def test_top_level_must_be_a_mapping(tmp_path, defaults, text, got):
    run = write(tmp_path / "list.yaml", text)
    with pytest.raises(UserError) as info:
        load(run, defaults_path=defaults)
    assert str(info.value) == f"{run}: the top level must be a mapping of keys to values, got {got}"


def test_bad_base_value(tmp_path, defaults):
    run = write(tmp_path / "run.yaml", "base: 3\n")
    with pytest.raises(UserError, match=f"^'base' in {run} must be a path or a list of paths, got int 3$"):
        load(run, defaults_path=defaults)


def test_inheritance_cycle_prints_the_chain(tmp_path, defaults):
    a = write(tmp_path / "a.yaml", "base: sub/b.yaml\n")
    b = write(tmp_path / "sub/b.yaml", "base: ../a.yaml\n")
    with pytest.raises(UserError) as info:
        load(a, defaults_path=defaults)
    assert str(info.value) == f"inheritance cycle in 'base:': {a} -> {b} -> {a}"
    self_ref = write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(UserError, match="inheritance cycle"):
        load(self_ref, defaults_path=defaults)


def test_diamond_bases_are_not_a_cycle(tmp_path, defaults):
    write(tmp_path / "root.yaml", "seed: 1\n")
    write(tmp_path / "left.yaml", "base: root.yaml\n")
    write(tmp_path / "right.yaml", "base: root.yaml\nseed: 3\n")
    assert load(write(tmp_path / "run.yaml", "base: [left.yaml, right.yaml]\n"), defaults_path=defaults).seed == 3


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.batch_size", "malformed override 'train.batch_size': expected KEY=VALUE, e.g. train.batch_size=16"),
        ("=3", "malformed override '=3': expected KEY=VALUE"),
        ("train..lr=1", "bad key 'train..lr' in --set: expected dotted names like train.batch_size"),
    ],
)
def test_malformed_overrides(tmp_path, defaults, item, message):
    with pytest.raises(UserError, match="^" + re.escape(message)):
        load(write(tmp_path / "run.yaml", ""), [item], defaults_path=defaults)


def test_override_value_that_is_not_yaml():
    with pytest.raises(UserError, match="cannot read the value of override 'a=\\[1, 2' as YAML"):
        parse_overrides(["a=[1, 2"])


# ---------------------------------------------------------------- Config object


def test_config_access_and_read_only(tmp_path, defaults):
    cfg = load(write(tmp_path / "run.yaml", "data: {name: 维基}\n"), defaults_path=defaults)
    assert cfg.train.batch_size == cfg["train"]["batch_size"] == cfg.get("train.batch_size") == 8
    assert cfg.get("train.nope") is None and cfg.get("train.batch_size.x", 5) == 5
    assert list(cfg) == ["seed", "model", "train", "data"] and len(cfg.model) == 3
    assert cfg.data.name == "维基"
    with pytest.raises(AttributeError, match="did you mean 'batch_size'"):
        _ = cfg.train.batch_sise
    with pytest.raises(AttributeError, match="read-only"):
        cfg.seed = 3
    with pytest.raises(TypeError):
        cfg["seed"] = 3
    assert repr(Config({"a": {"b": [1]}})) == "Config({'a': {'b': [1]}})"
    assert Config({"a": {"b": [1]}}) == {"a": {"b": [1]}}


def test_with_updates_returns_checked_copy(tmp_path, defaults):
    cfg = load(write(tmp_path / "run.yaml", ""), defaults_path=defaults)
    changed = cfg.with_updates({"train.batch_size": 3, "train.lr": "5e-5", "train.milestones": (4,)})
    assert (changed.train.batch_size, changed.train.lr, changed.train.milestones) == (3, 5e-5, (4,))
    assert cfg.train.batch_size == 8 and changed.model == cfg.model
    assert changed.with_updates({"train.amp": True}).train.amp is True  # the result keeps its defaults
    with pytest.raises(UserError, match="^unknown key 'train.bach_size' in with_updates\\(\\); did you mean"):
        cfg.with_updates({"train.bach_size": 3})
    with pytest.raises(UserError, match="^train.batch_size in with_updates\\(\\): expected int, got str 'x'$"):
        cfg.with_updates({"train.batch_size": "x"})
    assert Config({"a": 1}).with_updates({"b.c": 2}).to_dict() == {"a": 1, "b": {"c": 2}}  # no defaults: open


def test_pickle_round_trip_keeps_values_and_checks(tmp_path, defaults):
    cfg = load(write(tmp_path / "run.yaml", ""), ["data.extra.k=v"], defaults_path=defaults)
    restored = pickle.loads(pickle.dumps(cfg))
    assert restored == cfg and restored.data.extra.k == "v"
    with pytest.raises(UserError, match="unknown key"):
        restored.with_updates({"nope": 1})


def test_save_then_load_round_trip_in_defaults_order(tmp_path, defaults):
    run = write(tmp_path / "run.yaml", "data: {name: 中文, extra: {z: 1}}\ntrain: {lr: 2.5e-6}\nseed: 7\n")
    cfg = load(run, defaults_path=defaults)
    path = save_config(cfg, tmp_path / "out" / "run1")
    assert path == os.path.join(tmp_path / "out" / "run1", "config.yaml")
    text = open(path, encoding="utf-8").read()
    assert "中文" in text  # allow_unicode
    assert [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")] == list(cfg)
    assert os.listdir(tmp_path / "out" / "run1") == ["config.yaml"]  # no temporary file left behind
    assert load(path, defaults_path=defaults) == cfg


def test_cli_helpers(tmp_path, defaults):
    run = write(tmp_path / "run.yaml", "seed: 5\n")
    parser = add_config_arguments(argparse.ArgumentParser(), default_config=str(run))
    args = parser.parse_args(["--set", "train.batch_size=2", "--set", "seed=9", "train.amp=true"])
    cfg = config_from_args(args, defaults_path=defaults)
    assert (cfg.seed, cfg.train.batch_size, cfg.train.amp) == (9, 2, True)
    assert parser.parse_args([]).overrides == []
    with pytest.raises(SystemExit):
        add_config_arguments(argparse.ArgumentParser()).parse_args([])  # --config required without a default


def test_main_prints_resolved_config_or_error(tmp_path, defaults, capsys):
    run = write(tmp_path / "run.yaml", "seed: 5\n")
    assert main([str(run), "--defaults", str(defaults), "--set", "train.batch_size=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["train"]["batch_size"] == 2 and "base" not in printed
    assert main([str(run), "--defaults", str(defaults), "--set", "trian.lr=1"]) == 2
    assert capsys.readouterr().err == "error: unknown key 'trian.lr' in --set; did you mean 'train.lr'?\n"


# ---------------------------------------------------------------- the repository's own configs


REPO_CONFIGS = sorted(
    path
    for path in glob.glob(os.path.join(REPO_ROOT, "config", "**", "*.yaml"), recursive=True)
    if os.path.abspath(path) != os.path.abspath(DEFAULTS_PATH)
)


@pytest.mark.skipif(not os.path.isfile(DEFAULTS_PATH), reason="config/defaults.yaml does not exist yet")
@pytest.mark.parametrize("path", REPO_CONFIGS, ids=[os.path.relpath(p, REPO_ROOT) for p in REPO_CONFIGS])
def test_every_repo_config_loads_against_the_real_defaults(path):
    cfg = load_config(path)
    with open(DEFAULTS_PATH, encoding="utf-8") as handle:
        assert list(cfg) == list(yaml.safe_load(handle))  # every top-level section, in the defaults' order
