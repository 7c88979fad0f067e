"""Configuration: YAML files with `base:` inheritance, dotted overrides, and checking against a defaults tree.

A run config is resolved in this order, each step overriding the previous one:

1. the defaults tree (`config/defaults.yaml`: every valid key with its default value);
2. the files named by `base:` (a path or a list of paths, relative to the file naming them; bases may have bases);
3. the file itself;
4. dotted overrides such as `--set train.batch_size=16 model.cross.layers=4`.

Dicts merge deeply; lists and scalars replace. Every key must exist in the defaults and every value must have the
default's type (see `_Checker.coerce`). A section whose default is `{}` is open: it takes any keys. A default of
`null` marks an optional key that takes null, any scalar or a list.

Run `python -m src.config CONFIG.yaml [--set KEY=VALUE ...]` to print a resolved config.
"""
import argparse
import copy
import difflib
import os
import re
import sys
from collections.abc import Mapping

import yaml

from src.errors import UserError
from src.utils.files import atomic_write_text

DEFAULTS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "defaults.yaml")
BASE_KEY = "base"
OVERRIDE_SOURCE = "--set"

_FLOAT_TEXT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` (exponent, no dot) as a float, as YAML 1.2 does."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class Config(Mapping):
    """Read-only nested mapping with attribute access: `cfg.train.batch_size` or `cfg["train"]["batch_size"]`.

    Sections are `Config` objects and lists are stored as tuples; `to_dict()` gives plain dicts and lists back.
    Keys that clash with method names (`get`, `items`, ...) need item access. `with_updates` returns a changed copy,
    checked against the defaults the config was loaded with (a `Config` built from a plain dict has no defaults and
    takes any update).
    """

    __slots__ = ("_data", "_schema")

    def __init__(self, data=None, schema=None):
        schema = schema if isinstance(schema, dict) else {}
        frozen = {key: _freeze(value, schema.get(key)) for key, value in _plain(data or {}).items()}
        object.__setattr__(self, "_data", frozen)
        object.__setattr__(self, "_schema", schema)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._data), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AttributeError(f"config has no key '{name}'{hint}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use cfg.with_updates({'a.b': value}) for a changed copy")

    def __dir__(self):
        return sorted(set(super().__dir__()) | {key for key in self._data if key.isidentifier()})

    def __eq__(self, other):
        if isinstance(other, Config):
            return self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == _plain(other)
        return NotImplemented

    __hash__ = None

    def __reduce__(self):
        return Config, (self.to_dict(), self._schema)

    def __repr__(self):
        return f"Config({self.to_dict()!r})"

    def __str__(self):
        return self.to_yaml()

    def get(self, key, default=None):
        """Value at a dotted key such as "train.batch_size", or `default` when any part is missing."""
        node = self
        for part in key.split("."):
            if not isinstance(node, Config) or part not in node._data:
                return default
            node = node._data[part]
        return node

    def to_dict(self):
        """Deep copy as plain dicts and lists, keys in order."""
        return _plain(self)

    def to_yaml(self):
        """The config as YAML text, keys in order, non-ASCII characters kept."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False)

    def with_updates(self, updates):
        """Copy with dotted keys replaced, e.g. `cfg.with_updates({"train.lr": 1e-4})`; checked like overrides."""
        data = _apply_dotted(self.to_dict(), updates, _Checker(self._schema, "with_updates()"))
        return Config(data, self._schema)


def load_config(path, overrides=(), defaults_path=DEFAULTS_PATH):
    """Resolve the config file at `path` (defaults, then its bases, then the file, then `overrides`)."""
    schema = _read_mapping(defaults_path, missing_hint=" (the defaults tree that lists every valid key)")
    data = copy.deepcopy(schema)
    for layer_path, layer in _layers(os.fspath(path), referenced_by=None, chain=()):
        data = _Checker(schema, layer_path).merge(data, layer, schema)
    data = _apply_dotted(data, parse_overrides(overrides), _Checker(schema, OVERRIDE_SOURCE))
    return Config(data, schema)


def parse_overrides(items):
    """Turn ["train.batch_size=16", ...] into {"train.batch_size": 16, ...}; values are read as YAML."""
    parsed = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"malformed override '{item}': expected KEY=VALUE, e.g. train.batch_size=16")
        try:
            parsed[key] = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise UserError(f"cannot read the value of override '{item}' as YAML: {_one_line(exc)}") from None
    return parsed


def save_config(cfg, out_dir, name="config.yaml"):
    """Write the resolved config as YAML to out_dir/name atomically (temporary file, then rename); return the path."""
    path = os.path.join(out_dir, name)
    atomic_write_text(path, cfg.to_yaml())
    return path


def add_config_arguments(parser, default_config=None):
    """Add `--config PATH` (required unless a default is given) and repeatable `--set KEY=VALUE ...` to `parser`."""
    parser.add_argument(
        "--config",
        default=default_config,
        required=default_config is None,
        metavar="PATH",
        help="run config YAML" + (f" (default: {default_config})" if default_config else ""),
    )
    _add_set_argument(parser)
    return parser


def config_from_args(args, defaults_path=DEFAULTS_PATH):
    """The config named by parsed `--config` / `--set` arguments."""
    return load_config(args.config, args.overrides, defaults_path=defaults_path)


def main(argv=None):
    """Print the resolved config of a YAML file."""
    parser = argparse.ArgumentParser(prog="python -m src.config", description="Print a resolved config as YAML.")
    parser.add_argument("config", metavar="CONFIG.yaml", help="run config to resolve")
    parser.add_argument("--defaults", default=DEFAULTS_PATH, metavar="PATH", help="defaults tree (default: the repo's)")
    _add_set_argument(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, defaults_path=args.defaults)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(cfg.to_yaml())
    return 0


def _add_set_argument(parser):
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values by dotted key, e.g. --set train.batch_size=16 model.cross.layers=4",
    )


class _Checker:
    """Merges values from one source (a file, `--set`, `with_updates()`) into a config tree, checking them."""

    def __init__(self, root_schema, source):
        self.root_schema = root_schema
        self.source = source

    def merge(self, base, update, schema, prefix=""):
        """`base` deep-updated by `update`; keys are checked against `schema` unless it is empty (open section)."""
        result = dict(base)
        for key, value in update.items():
            full_key = prefix + str(key)
            if not isinstance(key, str):
                raise UserError(f"key '{full_key}' in {self.source} must be a string; quote it")
            if not schema:
                old = result.get(key)
                both_dicts = isinstance(old, dict) and isinstance(value, Mapping)
                result[key] = self.merge(old, value, {}, full_key + ".") if both_dicts else _plain(value)
            elif key not in schema:
                raise self.unknown_key(prefix, key, schema)
            elif isinstance(schema[key], dict):
                self._expect(isinstance(value, Mapping), value, "a section (mapping)", full_key)
                old = result.get(key)
                result[key] = self.merge(old if isinstance(old, dict) else {}, value, schema[key], full_key + ".")
            else:
                result[key] = self.coerce(value, schema[key], full_key)
        return result

    def coerce(self, value, default, key):
        """`value` checked against the type of `default`: int (not bool), float (int and "1e-4" accepted and
        converted), str, bool, list (elements against the first default element), null (anything but a mapping)."""
        value = _plain(value)
        if default is None:
            self._expect(not isinstance(value, dict), value, "a scalar or a list", key)
            return value
        if isinstance(default, bool):
            self._expect(isinstance(value, bool), value, "bool", key)
        elif isinstance(default, int):
            self._expect(isinstance(value, int) and not isinstance(value, bool), value, "int", key)
        elif isinstance(default, float):
            if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
                return float(value)
            self._expect(isinstance(value, (int, float)) and not isinstance(value, bool), value, "float", key)
            return float(value)
        elif isinstance(default, list):
            self._expect(isinstance(value, list), value, "list", key)
            if default:
                return [self.coerce(item, default[0], f"{key}[{index}]") for index, item in enumerate(value)]
        elif isinstance(default, dict):
            self._expect(isinstance(value, dict), value, "a section (mapping)", key)
            return self.merge({}, value, default, key + ".")
        else:
            self._expect(isinstance(value, type(default)), value, type(default).__name__, key)
        return value

    def _expect(self, ok, value, expected, key):
        if not ok:
            raise UserError(f"{key} in {self.source}: expected {expected}, got {_describe(value)}")

    def check_path(self, parts):
        """Raise for the first part of a dotted key that is not in the defaults (open sections end the check)."""
        section = self.root_schema
        for index, part in enumerate(parts):
            if not isinstance(section, dict) or not section:
                return
            if part not in section:
                prefix = "".join(f"{name}." for name in parts[:index])
                raise self.unknown_key(prefix, part, section, tail=parts[index + 1 :])
            section = section[part]

    def unknown_key(self, prefix, key, section, tail=()):
        """UserError for `prefix + key (+ .tail)`, suggesting close names: siblings first, then same-named keys
        elsewhere, else listing the section's keys."""
        dotted_tail = "".join(f".{name}" for name in tail)
        everything = _dotted_keys(self.root_schema)
        close = [prefix + name for name in difflib.get_close_matches(str(key), list(section), n=3, cutoff=0.6)]
        if not close:
            leaves = {name.rsplit(".", 1)[-1] for name in everything}
            near = set(difflib.get_close_matches(str(key), leaves, n=3, cutoff=0.8))
            close = [name for name in everything if name.rsplit(".", 1)[-1] in near][:3]
        close = [name + dotted_tail if name + dotted_tail in everything else name for name in close]
        if close:
            listed = ", ".join(f"'{name}'" for name in close[:-1]) + " or " * (len(close) > 1) + f"'{close[-1]}'"
            hint = f"did you mean {listed}?"
        else:
            hint = f"valid keys {f'in {prefix[:-1]!r}' if prefix else 'at the top level'}: " + ", ".join(section)
        return UserError(f"unknown key '{prefix}{key}{dotted_tail}' in {self.source}; {hint}")


def _layers(path, referenced_by, chain):
    """(path, values) of every file to apply, bases first, each file after its own bases."""
    key = os.path.realpath(path)
    if key in (real for real, _ in chain):
        shown = [shown for _, shown in chain] + [path]
        raise UserError("inheritance cycle in 'base:': " + " -> ".join(shown))
    hint = f" (named in 'base:' of {referenced_by})" if referenced_by else ""
    values = _read_mapping(path, missing_hint=hint)
    bases = values.pop(BASE_KEY, None)
    if isinstance(bases, str):
        bases = [bases]
    if bases is not None and (not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases)):
        raise UserError(f"'base' in {path} must be a path or a list of paths, got {_describe(bases)}")
    layers = []
    for base in bases or ():
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
        layers += _layers(base_path, referenced_by=path, chain=chain + ((key, path),))
    return layers + [(path, values)]


def _read_mapping(path, missing_hint=""):
    """Top-level mapping of a YAML file (an empty file is an empty mapping)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}{missing_hint}")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.load(handle, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"YAML syntax error in {path}{where}: {_one_line(exc)}; fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys to values, got {_describe(values)}")
    return values


def _apply_dotted(data, updates, checker):
    """`data` with each dotted key of `updates` set (and checked) in turn."""
    for dotted, value in updates.items():
        parts = dotted.split(".")
        if not all(parts):
            raise UserError(f"bad key '{dotted}' in {checker.source}: expected dotted names like train.batch_size")
        checker.check_path(parts)
        nested = value
        for part in reversed(parts):
            nested = {part: nested}
        data = checker.merge(data, nested, checker.root_schema)
    return data


def _freeze(value, schema):
    """Stored form of a plain value: dicts become Config, lists become tuples."""
    if isinstance(value, dict):
        return Config(value, schema)
    if isinstance(value, list):
        item_schema = schema[0] if isinstance(schema, list) and schema else None
        return tuple(_freeze(item, item_schema) for item in value)
    return value


def _plain(value):
    """Deep copy of `value` with mappings as dicts and tuples as lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _dotted_keys(tree, prefix=""):
    names = []
    for key, value in tree.items():
        names.append(prefix + str(key))
        if isinstance(value, dict):
            names += _dotted_keys(value, f"{prefix}{key}.")
    return names


def _describe(value):
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _one_line(exc):
    problem = getattr(exc, "problem", None) or str(exc)
    return " ".join(problem.split())


if __name__ == "__main__":
    sys.exit(main())
