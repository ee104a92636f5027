"""The numeric core stays free of ONNX; nothing imports the CLI."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "onnxzip"
NUMERIC_OK = {"numpy", "scipy", "__future__", "typing", "dataclasses", "itertools", "math"}


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add("." + (node.module or "") if node.level else node.module.split(".")[0])
    return out


@pytest.mark.parametrize("module", ["merge.py", "plan.py", "lowrank.py", "spool.py"])
def test_numeric_core_imports_only_numpy_and_scipy(module):
    bad = {m for m in imports(PKG / module) if m not in NUMERIC_OK | {"os", "shutil", "tempfile", "pathlib"}
           and m not in (".errors", ".registry", ".lowrank")}
    assert bad == set(), f"{module} imports {bad}"


def test_nothing_imports_the_cli():
    for path in PKG.glob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert ".cli" not in imports(path), path.name


def test_onnxruntime_is_imported_in_runtime_only():
    users = sorted(p.name for p in PKG.glob("*.py") if "onnxruntime" in imports(p))
    assert users == ["normalize.py", "runtime.py"]  # normalize only probes it for constant folding
