"""Project-wide fixtures.

`disable_subp_usage` (autouse, after cloud-init's): any command a test runs through `firstboot.subp`
fails unless the test allowed it with `@pytest.mark.allow_subp("packer", "chronyd", ...)` or
`@pytest.mark.allow_subp(all=True)`. Tests that mean to run real tools say so; nothing runs by accident.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from firstboot import subp

REPO = Path(__file__).resolve().parent.parent
# Loopback servers for firstboot tests (chronyd, dnsmasq, TLS, CONNECT proxy).
pytest_plugins = ["fixtures.firstboot_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_subp(*names, all=False): commands a test may run via subp")
    # tools/fault_table.py (bash tools/dev.sh faults) lists every test carrying this marker.
    config.addinivalue_line("markers", "fault(fault, expected): a fault a test injects, what must happen")


@pytest.fixture(autouse=True)
def no_background_sign_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The k3s step's early Entra ID sign-in (firstboot.arm.prewarm) stays off in this process."""
    from firstboot import arm

    monkeypatch.setattr(arm, "PREWARM_SIGN_IN", False)


@pytest.fixture(autouse=True)
def disable_subp_usage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    marker = request.node.get_closest_marker("allow_subp")
    allowed: set[str] = set(marker.args) if marker else set()
    allow_all = bool(marker and marker.kwargs.get("all"))

    def check_allowed(argv: Sequence[str]) -> None:
        name = os.path.basename(argv[0])
        if not allow_all and name not in allowed:
            raise AssertionError(f"test ran {name!r} through subp without @pytest.mark.allow_subp({name!r})")

    real_spawn = subp._spawn

    def guarded(
        argv: Sequence[str],
        *,
        stdin_data: bytes | None,
        env: Mapping[str, str] | None,
        cwd: Path | None,
        timeout: float,
    ) -> tuple[int, bytes, bytes]:
        check_allowed(argv)
        return real_spawn(argv, stdin_data=stdin_data, env=env, cwd=cwd, timeout=timeout)

    monkeypatch.setattr(subp, "_spawn", guarded)
    real_spawn_to_files = subp._spawn_to_files

    def guarded_to_files(
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        cwd: Path | None,
        timeout: float,
        output_dir: Path,
    ) -> tuple[int, bytes, bytes]:
        check_allowed(argv)
        return real_spawn_to_files(argv, env=env, cwd=cwd, timeout=timeout, output_dir=output_dir)

    monkeypatch.setattr(subp, "_spawn_to_files", guarded_to_files)
    real_open_stream = subp._open_stream

    def guarded_stream(
        argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: Path | None
    ) -> subprocess.Popen[bytes]:
        check_allowed(argv)
        return real_open_stream(argv, env=env, cwd=cwd)

    monkeypatch.setattr(subp, "_open_stream", guarded_stream)
    yield
