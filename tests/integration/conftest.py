"""Fixtures for integration tests against real components (TEST-COMPONENTS.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from doubles.arm_double import ArmDouble
from fixtures.firstboot_plugin import Pki
from fixtures.vcsim import VcsimHandle, start_vcsim

from integration.vsphere_helpers import DEMO_ARC_ID, azure_env


@pytest.fixture(scope="session")
def vcsim() -> Iterator[VcsimHandle]:
    """One vCenter simulator for the session (loopback, user and password). Use unique VM names."""
    handle = start_vcsim()
    yield handle
    handle.stop()


@pytest.fixture
def fresh_vcsim() -> Iterator[VcsimHandle]:
    """A simulator of its own for a test that counts or deletes inventory objects."""
    handle = start_vcsim()
    yield handle
    handle.stop()


@pytest.fixture
def arm_env(arm: ArmDouble, pki: Pki) -> dict[str, str]:
    """builder's Azure environment for the ARM double, which holds the demo fleet's connected cluster;
    operations answer with Retry-After: 0, so the SDK polls a long-running delete at once."""
    arm.config.retry_after = 0
    arm.put_resource(DEMO_ARC_ID, {"provisioningState": "Succeeded"}, location="westeurope")
    return azure_env(arm.url, pki.ca.cert)
