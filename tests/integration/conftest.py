"""Fixtures for integration tests against real components (TEST-COMPONENTS.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.vcsim import VcsimHandle, start_vcsim


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
