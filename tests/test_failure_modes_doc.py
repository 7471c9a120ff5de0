"""docs/failure_modes.md names, for every row, the tests that prove it: each must exist, so a renamed or
deleted test cannot leave a row unproven."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tests(file: Path) -> set[str]:
    return {n.name for n in ast.parse(file.read_text(encoding="utf-8")).body
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_row_names_existing_tests():
    rows = [line for line in (REPO / "docs" / "failure_modes.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and not line.startswith("| what was done")]
    assert len(rows) >= 60
    for row in rows:
        cited = row.rstrip(" |").rsplit("|", 1)[-1]
        refs = re.findall(r"(test_\w+\.py)(?:::(test_\w+))?", cited)
        assert refs, f"row without a test: {row}"
        for file, name in refs:
            path = REPO / "tests" / file
            assert path.is_file(), f"{file} (row: {row[:80]})"
            if name:
                assert name in _tests(path), f"{file}::{name} (row: {row[:80]})"
