"""docs/faults.md stays true: every row names a test that exists (a row without a test is a failure)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|(?!---)(?P<cells>.*)\|\s*$")
TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)(\[[^\]]*\])?`")


def test_every_fault_row_names_a_test_that_exists() -> None:
    rows = [m.group("cells") for line in (REPO / "docs/faults.md").read_text().splitlines()
            if (m := ROW.match(line)) and not line.startswith("| Fault")]
    assert len(rows) >= 10
    for cells in rows:
        tests = TEST.findall(cells.split("|")[-1])
        assert tests, f"a row without a test: {cells}"
        for path, name, _case in tests:
            tree = ast.parse((REPO / path).read_text())
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined, f"{path} has no {name} (docs/faults.md: {cells.split('|')[1].strip()})"
