"""The step registry: every step module, in dependency order (ARCHITECTURE.md, firstboot steps).

Each module defines `META: StepMeta`, `check(ctx) -> CheckResult` and `run(ctx) -> None`, and may define
`begin(ctx) -> None` and `abandon(ctx) -> None` (see `firstboot.step`). `ORDER` is the one list of step
names (kept in `firstboot.steporder`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from firstboot.step import CheckResult, Context, StepMeta
from firstboot.steporder import ORDER

__all__ = ["ORDER", "Step", "load"]


@dataclass(frozen=True)
class Step:
    """A loaded step: its header and its two functions."""

    meta: StepMeta
    check: Callable[[Context], CheckResult]
    run: Callable[[Context], None]
    # Started early, once META.begins_after are stamped (firstboot.step); None for most steps.
    begin: Callable[[Context], None] | None = None
    # Undoes what `begin` left when the run ends before the step runs; None when nothing needs undoing.
    abandon: Callable[[Context], None] | None = None

    @property
    def name(self) -> str:
        """The step's name."""
        return self.meta.name


def load(names: Iterable[str] = ORDER) -> list[Step]:
    """Import the step modules named (default: all, in order).

    A missing module is a packaging error and raises: skipping a link of the chain would report an
    onboarding as done that never checked it.
    """
    steps = []
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        begin, abandon = getattr(module, "begin", None), getattr(module, "abandon", None)
        steps.append(Step(meta=module.META, check=module.check, run=module.run, begin=begin, abandon=abandon))
    return steps
