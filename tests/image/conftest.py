"""testinfra suite a baked arcbake template must pass (run by Packer before sealing, or by hand).

    pytest tests/image --hosts=ssh://arcbake@HOST --ssh-identity-file=KEY --sudo -m "not sealed"
    ARCBAKE_IMAGE_SEALED=1 pytest tests/image --hosts=...            # after 90-seal: sealed checks too

Expected values (K3s version, NTP servers, ports...) come from the build dir's `image-expect.json`:
`ARCBAKE_IMAGE_EXPECT=PATH`, or `../../image-expect.json` when the suite sits in a build dir.
`ARCBAKE_IMAGE_SKIP=k3s,azure` skips groups of checks (e.g. a non-EL test guest without K3s); checks of
EL-only things (rpm, SELinux, firewalld) skip themselves on hosts whose /etc/os-release is not EL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

EL_IDS = {"rhel", "rocky", "centos", "almalinux", "ol", "fedora"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sealed: holds only after 90-seal (machine-id, host keys)")
    config.addinivalue_line("markers", "el: needs an EL host (rpm, SELinux, firewalld)")
    config.addinivalue_line("markers", "group(name): a group ARCBAKE_IMAGE_SKIP can skip (k3s, azure, dns)")


def _expect_path() -> Path:
    env = os.environ.get("ARCBAKE_IMAGE_EXPECT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "image-expect.json"


@pytest.fixture(scope="session")
def expect() -> dict[str, Any]:
    """What this image must contain, from image-expect.json."""
    path = _expect_path()
    if not path.is_file():
        pytest.fail(f"no expectations: set ARCBAKE_IMAGE_EXPECT (looked for {path})", pytrace=False)
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def os_release(host: Any) -> dict[str, str]:
    """/etc/os-release of the host under test as a dict."""
    out: dict[str, str] = {}
    text = host.file("/etc/os-release").content_string
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def is_el(host: Any) -> bool:
    """True when /etc/os-release names an EL distribution (ID or ID_LIKE)."""
    rel = os_release(host)
    ids = {rel.get("ID", "")} | set(rel.get("ID_LIKE", "").split())
    return bool(ids & EL_IDS)


@pytest.fixture(autouse=True)
def _applicability(request: pytest.FixtureRequest) -> None:
    skip = {s.strip() for s in os.environ.get("ARCBAKE_IMAGE_SKIP", "").split(",") if s.strip()}
    for marker in request.node.iter_markers("group"):
        if marker.args[0] in skip:
            pytest.skip(f"group {marker.args[0]!r} skipped by ARCBAKE_IMAGE_SKIP")
    if request.node.get_closest_marker("sealed") and os.environ.get("ARCBAKE_IMAGE_SEALED") != "1":
        pytest.skip("holds only after sealing (set ARCBAKE_IMAGE_SEALED=1 after 90-seal)")
    if request.node.get_closest_marker("el"):
        host = request.getfixturevalue("host")
        if not is_el(host):
            pytest.skip("EL-only check; /etc/os-release is not EL")
