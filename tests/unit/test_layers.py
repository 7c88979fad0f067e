"""The package's layers import downward only: data -> models -> weights -> tasks -> engine -> inference -> evaluation,
with errors, config, utils, metrics and native as leaves (they import only other leaves), and nothing in src imports
what sits on top of it: the synthetic demo (demo/), the benchmarks (bench/) or an entry point."""
import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"
LEAVES = {"errors", "config", "utils", "metrics", "native"}
LAYERS = ["data", "models", "weights", "tasks", "engine", "inference", "evaluation"]
ON_TOP = ("demo", "bench", "train_pretrain", "train_retrieval", "train_caption", "train_vqa", "eval", "export")
RANK = {**{leaf: 0 for leaf in LEAVES}, **{name: i + 1 for i, name in enumerate(LAYERS)}}


def imports(path):
    """(line, imported module) for every import of the file, also the ones inside functions."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name


def package_of(path):
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def violations(path):
    own = package_of(path)
    for line, module in imports(path):
        parts = module.split(".")
        if parts[0] in ON_TOP:
            yield f"{path.relative_to(SRC.parent)}:{line} imports {module}: src never imports what sits on top of it"
        if parts[0] != "src" or len(parts) < 2 or own == "__init__":
            continue
        target = parts[1]
        if target not in RANK:
            yield f"{path.relative_to(SRC.parent)}:{line} imports {module}: src/{target} has no layer in this test"
        elif own in LEAVES and target not in LEAVES or own not in LEAVES and RANK[target] > RANK[own]:
            yield f"{path.relative_to(SRC.parent)}:{line} ({own}) imports {module} from a higher layer ({target})"


def test_every_package_of_src_has_a_layer():
    packages = {package_of(p) for p in SRC.rglob("*.py")} - {"__init__"}
    assert packages <= set(RANK), f"give these a layer: {sorted(packages - set(RANK))}"


def test_src_imports_only_downward():
    found = [v for path in sorted(SRC.rglob("*.py")) for v in violations(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from src.inference.pipeline import VQA\n", "higher layer (inference)"),
    ("def f():\n    from src.engine.trainer import Trainer\n", "higher layer (engine)"),
    ("import demo.data\n", "never imports what sits on top"),
    ("from bench import print_table\n", "never imports what sits on top"),
])
def test_the_checker_finds_upward_imports(tmp_path, monkeypatch, source, expected):
    fake = SRC / "models" / "_layer_probe.py"   # only read, never written: a path inside src/models for the check
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self, encoding=None: source)
    assert any(expected in v for v in violations(fake))
