"""Hypothesis profiles and the per-property example counter of the hostile-input suite.

Profiles: `ci` (default, quick) and `long` (`HYPOTHESIS_PROFILE=long`, what `bash tools/dev.sh fuzz` uses).
Every property calls `count(name)` once per example; the totals are printed at the end of the session, so
a run shows how many generated documents each parser actually saw.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from property.counting import COUNTS

# deadline=None: the 2-core CI machine runs other suites at the same time, so a per-example deadline
# would flake; hangs are caught by each property's own wall-clock assertion and pytest-timeout.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many examples each property ran."""
    if not COUNTS:
        return
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    terminalreporter.section(f"hypothesis examples per property (profile {profile})")
    for name, n in sorted(COUNTS.items()):
        terminalreporter.write_line(f"{n:7d}  {name}")
    terminalreporter.write_line(f"{sum(COUNTS.values()):7d}  in all")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long profile runs for minutes per property: lift the suite's 300 s per-test timeout for it."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "long":
        for item in items:
            if "tests/property/" in item.nodeid:
                item.add_marker(pytest.mark.timeout(3600))
