"""The API version the session moves to after RetrieveServiceContent, from the server's `about.apiVersion`
(instead of SmartConnect's extra GET of vimServiceVersions.xml), and the simulator check from `about`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from builder.status import SIMULATOR_UUID, is_simulator
from builder.vsphere.connection import BASE_VERSION, api_version


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("8.0.3.0", "vim.version.v8_0_3_0"),
        ("8.0.3", "vim.version.v8_0_3_0"),
        ("7.0.3.0", "vim.version.v7_0_3_0"),
        ("7.0", "vim.version.v7_0"),
        ("6.7.3", "vim.version.version15"),
        ("6.5", "vim.version.version11"),  # the bundled simulator
        # A newer server than pyVmomi knows: the newest pyVmomi speaks (the server accepts older ones).
        ("99.0", "vim.version.v9_1_1_0"),
        # Between two known versions: the older one, never a version the server lacks.
        ("6.8", "vim.version.version15"),
        ("", BASE_VERSION),
        ("not-a-version", BASE_VERSION),
        ("1.0", BASE_VERSION),
    ],
)
def test_api_version(server: str, expected: str) -> None:
    assert api_version(server) == expected


def _session(**about: str | None) -> object:
    fields = {"name": "VMware vCenter Server", "fullName": "VMware vCenter Server 8.0.3", "instanceUuid": "x"}
    return SimpleNamespace(content=SimpleNamespace(about=SimpleNamespace(**{**fields, **about})))


@pytest.mark.parametrize(
    ("about", "expected"),
    [
        ({}, False),
        ({"instanceUuid": SIMULATOR_UUID}, True),
        ({"fullName": "VMware vCenter Server 6.5.0 build-5973321 (govmomi simulator)"}, True),
        ({"name": None, "fullName": None}, False),
    ],
)
def test_simulator_from_about(about: dict[str, str | None], expected: bool) -> None:
    assert is_simulator(_session(**about)) is expected  # type: ignore[arg-type]
