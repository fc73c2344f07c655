"""Example counter shared by the properties and the summary hook in conftest.py."""

from __future__ import annotations

import os
from collections import Counter

COUNTS: Counter[str] = Counter()


def count(name: str) -> None:
    """Record that property `name` ran one more example."""
    COUNTS[name] += 1


def scaled(examples: int) -> int:
    """Examples for an expensive property (bombs, huge values): `examples` in the quick `ci` profile,
    25 times as many in the `long` one (an explicit max_examples would otherwise ignore the profile)."""
    return examples * (25 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1)
