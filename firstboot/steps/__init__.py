"""The step registry: every step module, in dependency order (ARCHITECTURE.md, firstboot steps).

Each module defines `META: StepMeta`, `check(ctx) -> CheckResult` and `run(ctx) -> None` (see
`firstboot.step`). `ORDER` is the one list of step names; modules that do not exist yet are left out with
a warning (so the engine can run while steps are being written).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from firstboot.step import CheckResult, Context, StepMeta

LOG = logging.getLogger(__name__)

ORDER: tuple[str, ...] = (
    "metadata",
    "hostname",
    "time",
    "dns",
    "proxy",
    "connectivity",
    "resources",
    "k3s",
    "arc",
    "flux",
)


@dataclass(frozen=True)
class Step:
    """A loaded step: its header and its two functions."""

    meta: StepMeta
    check: Callable[[Context], CheckResult]
    run: Callable[[Context], None]

    @property
    def name(self) -> str:
        """The step's name."""
        return self.meta.name


def load(names: Iterable[str] = ORDER) -> list[Step]:
    """Import the step modules named (default: all, in order); missing modules are skipped with a warning."""
    steps = []
    for name in names:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            LOG.warning("step %s is not installed (no module %s); skipped", name, module_name)
            continue
        steps.append(Step(meta=module.META, check=module.check, run=module.run))
    return steps
