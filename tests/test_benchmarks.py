"""The benchmark scripts are not run by the suite (they take minutes to hours), so a renamed or moved
speechfuse name would break one unnoticed: every name a benchmark imports from speechfuse must exist."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _speechfuse_imports(path: Path) -> list[tuple[int, str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "speechfuse":
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def _resolves(module: str, name: str) -> bool:
    if hasattr(importlib.import_module(module), name):
        return True
    try:  # `from speechfuse.fusion import upstream` names a submodule
        importlib.import_module(f"{module}.{name}")
        return True
    except ImportError:
        return False


def test_there_are_benchmarks_that_import_speechfuse():
    assert sum(bool(_speechfuse_imports(path)) for path in BENCHMARKS) >= 10


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_speechfuse_exists(path):
    missing = [f"{path.name}:{line} from {module} import {name}" for line, module, name in _speechfuse_imports(path)
               if not _resolves(module, name)]
    assert not missing, missing
