"""pytest plugin behind the fault table: records, for every test marked `fault`, what it injected,
what arcbake should do, and whether the test passed.

Tag a test (or one parametrised case) with the fault it injects and the behaviour it proves:

    @pytest.mark.fault("az connectedk8s connect hangs; guest killed mid-arc", "next boot resumes at arc")
    def test_...

    pytest.param(..., marks=pytest.mark.fault("gzip bomb in guestinfo", "refused, not expanded"))

Stack several markers when one test proves several rows. `-p fault_plugin --fault-report FILE` writes the
rows as JSON (tools/fault_table.py runs pytest that way and prints the table).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest


@dataclass
class Row:
    """One injected fault and what happened."""

    fault: str
    expected: str
    test: str
    observed: str = "not run"
    detail: str = ""


_ROWS: dict[str, list[Row]] = {}
_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (tests/conftest.py does too; this covers test files outside the repo)."""
    config.addinivalue_line("markers", "fault(fault, expected): a fault a test injects, what must happen")


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--fault-report FILE`: where the rows go as JSON."""
    parser.addoption("--fault-report", default=None, help="write the fault table rows as JSON to FILE")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Register a row per fault marker of every selected test (after -k / -m deselection)."""
    for item in session.items:
        for marker in item.iter_markers("fault"):
            if len(marker.args) != 2:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.fault takes (fault, expected behaviour)"
                )
            fault, expected = (str(a) for a in marker.args)
            _ROWS.setdefault(item.nodeid, []).append(Row(fault, expected, item.nodeid))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Fold each phase's report into the test's rows: any failure wins, a skip is reported as such."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    rows = _ROWS.get(item.nodeid)
    if not rows:
        return None
    for row in rows:
        if report.failed:
            row.observed = "failed" if report.when == "call" else f"error in {report.when}"
            row.detail = str(report.longrepr).strip().splitlines()[-1][:200] if report.longrepr else ""
        elif report.skipped and row.observed == "not run":
            row.observed = "skipped"
            longrepr = report.longrepr
            row.detail = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
        elif report.when == "call" and report.passed and row.observed == "not run":
            row.observed = "survived"
    return None


def rows() -> list[Row]:
    """Every row recorded so far, in collection order."""
    return [row for group in _ROWS.values() for row in group]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the JSON report when asked for."""
    target = session.config.getoption("--fault-report")
    if target:
        Path(target).write_text(json.dumps([asdict(r) for r in rows()], indent=2))
