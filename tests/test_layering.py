"""The layout keeps the pipeline's direction: the numeric core free of ONNX, ONNX Runtime in one
room, nothing importing the CLI, and no subpackage importing a later stage."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "onnxzip"
NUMERIC_OK = {"numpy", "scipy", "__future__", "typing", "dataclasses", "itertools", "math", "time"}
#: the stages in pipeline order: a subpackage imports only itself and those before it, and the
#: report's records (the typed vocabulary every stage writes into; they import nothing of onnxzip's)
STAGES = ["graph", "calibrate", "sharing", "emit", "check", "tune", "report"]
RECORDS = "onnxzip.report.records"


def imports(path: Path) -> set[str]:
    """Absolute names of what ``path`` imports (relative imports resolved against the package)."""
    here = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else ()
            module = ".".join(base + ((node.module,) if node.module else ()))
            out.update(f"{module}.{a.name}" for a in node.names) if not node.module else out.add(module)
    return out


def modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("module", ["sharing/merge.py", "sharing/assign.py", "sharing/plan.py", "sharing/lowrank.py",
                                    "sharing/offsets.py", "calibrate/spool.py"])
def test_numeric_core_imports_only_numpy_and_scipy(module):
    bad = {m for m in imports(PKG / module) if m.split(".")[0] not in NUMERIC_OK | {"os", "shutil", "tempfile",
                                                                                   "pathlib"}
           and m not in ("onnxzip.errors", "onnxzip.registry", "onnxzip.sharing.lowrank", "onnxzip.sharing.assign",
                         RECORDS)}
    assert bad == set(), f"{module} imports {bad}"


def test_nothing_imports_the_cli():
    for path in modules():
        if path.name not in ("cli.py", "__main__.py"):
            assert not any(m.startswith("onnxzip.cli") for m in imports(path)), path


def test_onnxruntime_is_imported_in_runtime_only():
    users = sorted(str(p.relative_to(PKG)) for p in modules() if "onnxruntime" in {m.split(".")[0]
                                                                                   for m in imports(p)})
    assert users == ["calibrate/runtime.py", "graph/normalize/fold.py"]  # fold only probes it for folding


def test_the_records_import_nothing_of_onnxzip():
    assert not any(m.startswith("onnxzip") for m in imports(PKG / "report" / "records.py"))


def test_subpackages_import_only_earlier_stages():
    for path in modules():
        parts = path.relative_to(PKG).parts
        if len(parts) < 2:
            continue
        allowed = set(STAGES[:STAGES.index(parts[0]) + 1])
        for m in imports(path):
            if m.startswith("onnxzip.") and m.split(".")[1] in STAGES and m != RECORDS:
                assert m.split(".")[1] in allowed, f"{path.relative_to(PKG)} imports {m}"


def test_sharing_imports_no_onnx():
    """What to share is decided on arrays: graphs run only through calibrate's stages."""
    for path in sorted((PKG / "sharing").glob("*.py")):
        bad = {m for m in imports(path) if m.split(".")[0] in ("onnx", "onnx_graphsurgeon", "onnxruntime")}
        assert not bad, f"{path.name} imports {bad}"
