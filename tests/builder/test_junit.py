"""build --junit: the validators' cases plus one case per check of the image suite, from the JUnit file
the suite's pytest writes (real pytest output here), read back by junitparser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import junitparser

from builder.build import IMAGE_SUITE_JUNIT, write_junit
from builder.validators import Outcome, Status

SUITE = """
import pytest

def test_chronyd_enabled():
    pass

def test_k3s_not_started():
    assert "k3s" == "inactive", "k3s.service is active in the template: K3s must not start before sealing"

@pytest.mark.skip(reason="ARCBAKE_IMAGE_SKIP: no SSH in this build")
def test_sshd_config():
    pass
"""


def test_build_junit_holds_validators_and_image_suite_checks(tmp_path: Path) -> None:
    suite = tmp_path / "suite" / "test_image.py"
    suite.parent.mkdir()
    suite.write_text(SUITE)
    out_dir = tmp_path / "build"
    out_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite),
         f"--junitxml={out_dir / IMAGE_SUITE_JUNIT}"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout  # one check fails, as a broken image would
    outcomes = [
        Outcome("kickstart", Status.PASSED, "http/ks.cfg (RHEL9)", "ksvalidator", 0.4),
        Outcome("shellcheck", Status.FAILED, "scripts/10.sh:3:6: warning: x [SC2086]", "shellcheck", 0.2),
    ]
    junit = tmp_path / "out.xml"
    write_junit(junit, out_dir, outcomes)

    xml = junitparser.JUnitXml.fromfile(str(junit))
    suites = {s.name: {c.name: c for c in s} for s in xml}
    assert set(suites) == {"arcbake validators", "arcbake image suite"}
    assert set(suites["arcbake validators"]) == {"kickstart", "shellcheck"}
    image = suites["arcbake image suite"]
    assert set(image) == {"test_chronyd_enabled", "test_k3s_not_started", "test_sshd_config"}
    assert image["test_chronyd_enabled"].is_passed
    failure = image["test_k3s_not_started"].result[0]
    assert isinstance(failure, junitparser.Failure)
    assert "K3s must not start before sealing" in (failure.message or "") + (failure.text or "")
    assert isinstance(image["test_sshd_config"].result[0], junitparser.Skipped)
    assert all(c.classname.startswith("image.") for c in image.values())
    assert xml.tests == 5 and xml.failures == 2 and xml.skipped == 1


def test_build_junit_without_an_image_suite_run_has_the_validators_only(tmp_path: Path) -> None:
    junit = tmp_path / "out.xml"
    write_junit(junit, tmp_path, [Outcome("chrony", Status.SKIPPED, "chronyd is not installed", "chronyd")])
    xml = junitparser.JUnitXml.fromfile(str(junit))
    cases = [c for s in xml for c in s]
    assert [c.name for c in cases] == ["chrony"] and isinstance(cases[0].result[0], junitparser.Skipped)
