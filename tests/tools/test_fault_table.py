"""tools/fault_table.py: rows for every fault marker, the observed outcome, exit status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import fault_table  # noqa: E402

SAMPLE = """
import pytest

@pytest.mark.fault("disk full", "fails with a remedy")
def test_survives():
    assert True

@pytest.mark.fault("clock skew", "fails at time")
def test_breaks():
    assert 1 == 2

@pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.fault("bad input", "error")), 2])
def test_param(n):
    assert n

def test_unmarked():
    assert True
"""


def test_table_lists_each_fault_with_its_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    code = fault_table.main([str(sample), "-p", "no:cacheprovider"])
    out = capsys.readouterr().out
    table = out[out.index("fault ") :]
    rows = {
        line.split("|")[0].strip(): line.split("|")[2].strip()
        for line in table.splitlines()[2:]
        if "|" in line
    }
    assert rows == {"disk full": "survived", "clock skew": "failed", "bad input": "survived"}
    assert "2/3 faults survived" in out
    assert code == 1


def test_all_survived_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE)
    assert fault_table.main([str(sample), "-k", "survives", "-p", "no:cacheprovider"]) == 0
    assert "1/1 faults survived" in capsys.readouterr().out


def test_render_wraps_long_cells() -> None:
    rows = [{"fault": "x " * 80, "expected": "y " * 80, "observed": "survived", "test": "t", "detail": ""}]
    lines = fault_table.render(rows, 100).splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert sum("survived" in line for line in lines) == 1
