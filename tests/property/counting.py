"""Example counter shared by the properties and the summary hook in conftest.py."""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()


def count(name: str) -> None:
    """Record that property `name` ran one more example."""
    COUNTS[name] += 1
