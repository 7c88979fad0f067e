"""src/ is the library: the synthetic demo (demo/) and the benchmarks (bench/) sit on top of it and are never imported
from it, so src works without them."""
import ast
import os

from tests.helpers import ROOT

ON_TOP = ("demo", "bench")


def imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_module_of_src_imports_demo_or_bench():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "src")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offenders += [f"{os.path.relpath(path, ROOT)}: {module}" for module in imported_modules(path)
                              if module.split(".")[0] in ON_TOP]
    assert offenders == []


def test_the_check_sees_an_import_of_demo(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom demo.scene_reader import read_scenes\nimport bench.data as b\n")
    assert [m for m in imported_modules(str(module)) if m.split(".")[0] in ON_TOP] == ["demo.scene_reader",
                                                                                        "bench.data"]
