"""The tests/image plumbing, run for real on this (non-EL) machine with testinfra's local backend:
EL-only and post-seal checks skip with their reason, ARCBAKE_IMAGE_SKIP groups skip, missing
expectations fail clearly, and a check that holds here passes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from firstboot import subp

REPO = Path(__file__).resolve().parents[2]
PYTHON = os.path.basename(sys.executable)

# Each case starts a pytest of its own (a few seconds each).
pytestmark = pytest.mark.slow


def run_suite(expect: Path | None, select: str, **env: str) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARCBAKE_IMAGE")}
    environ.update(env)
    if expect is not None:
        environ["ARCBAKE_IMAGE_EXPECT"] = str(expect)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-rA", "-q"]
    argv += [str(REPO / "tests/image"), "--hosts=local://", "-k", select]
    result = subp.run(argv, timeout=120, env=environ, check=False, cwd=REPO)
    return result.exit_code, result.stdout + result.stderr


@pytest.fixture
def expect_file(tmp_path: Path) -> Path:
    path = tmp_path / "image-expect.json"
    path.write_text(
        json.dumps(
            {
                "k3s_version": "v1.31.4+k3s1",
                "packages": ["chrony"],
                "ntp_servers": ["a.example"],
                "build_user": "arcbake",
            }
        )
    )
    return path


@pytest.mark.allow_subp(PYTHON)
def test_skips_say_why(expect_file: Path) -> None:
    if Path("/etc/redhat-release").exists():
        pytest.fail("this test expects a non-EL machine (Debian 12 per TEST-COMPONENTS.md)")
    code, out = run_suite(
        expect_file,
        "selinux or machine_id or k3s_pinned or kubeconfig_absent",
        ARCBAKE_IMAGE_SKIP="k3s",
    )
    assert code == 0, out
    assert "EL-only check; /etc/os-release is not EL" in out
    assert "holds only after sealing" in out
    assert "group 'k3s' skipped by ARCBAKE_IMAGE_SKIP" in out
    assert "PASSED tests/image/test_image.py::test_kubeconfig_absent[local]" in out


@pytest.mark.allow_subp(PYTHON)
def test_sealed_checks_run_when_asked(expect_file: Path) -> None:
    # This machine is not sealed: its machine-id is set, so the check must now run and fail.
    code, out = run_suite(expect_file, "machine_id", ARCBAKE_IMAGE_SEALED="1")
    assert code == 1, out
    assert "FAILED tests/image/test_image.py::test_machine_id_empty[local]" in out


@pytest.mark.allow_subp(PYTHON)
def test_missing_expectations_fail_clearly(tmp_path: Path) -> None:
    code, out = run_suite(tmp_path / "nope.json", "chrony_servers")
    assert code != 0
    assert "no expectations: set ARCBAKE_IMAGE_EXPECT" in out
