"""resources: CPU, memory and free disk against K3s + Arc's minimum; a warning below the recommended.

Values come from `<root>/proc/cpuinfo`, `<root>/proc/meminfo` (the host's /proc when not planted) and the
free space of the file system that holds `<root>/var/lib/rancher` (its nearest existing parent), so tests
plant /proc files under `--root`.
Below the minimum the step fails permanently (retrying cannot add memory).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from firstboot import sizing
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="resources",
    needs=("metadata",),
    timeout_seconds=30,
    retry=RetryPolicy(deadline_seconds=10, initial_wait=1, max_wait=2, max_attempts=2),
    summary="checking CPU, memory and disk",
)

GIB = sizing.GIB
MIN_CPUS, MIN_MEMORY, MIN_DISK = sizing.MIN_CPUS, sizing.MIN_MEMORY_MIB << 20, sizing.MIN_FREE_DISK_GIB * GIB
RECOMMENDED_CPUS, RECOMMENDED_MEMORY = sizing.RECOMMENDED_CPUS, sizing.RECOMMENDED_MEMORY_MIB << 20
DATA_DIR = "/var/lib/rancher"
# The kernel keeps some memory for itself: a 4 GiB VM reports a little less in MemTotal.
MEMORY_SLACK = 0.95


@dataclass(frozen=True)
class Resources:
    """What the clone has."""

    cpus: int
    memory_bytes: int
    disk_free_bytes: int
    disk_path: Path


def _proc(ctx: Context, name: str) -> Path:
    # A test root without planted /proc files measures the host (a `--root` never has a real /proc).
    planted = ctx.path(f"/proc/{name}")
    return planted if planted.exists() else Path("/proc") / name


def measure(ctx: Context) -> Resources:
    """Read CPU count, MemTotal and free disk under the root."""
    try:
        cpuinfo = _proc(ctx, "cpuinfo").read_text(encoding="utf-8", errors="replace")
        meminfo = _proc(ctx, "meminfo").read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise PermanentFailure(f"cannot read /proc: {exc}", "check that /proc is mounted") from None
    cpus = sum(1 for line in cpuinfo.splitlines() if line.split(":")[0].strip() == "processor")
    mem_kib = 0
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    disk = ctx.path(DATA_DIR)
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent
    return Resources(cpus, mem_kib * 1024, shutil.disk_usage(disk).free, disk)


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def evaluate(res: Resources) -> tuple[list[str], list[str]]:
    """(problems below the minimum, warnings below the recommended)."""
    problems, warnings = [], []
    if res.cpus < MIN_CPUS:
        problems.append(f"{res.cpus} CPU (minimum {MIN_CPUS})")
    elif res.cpus < RECOMMENDED_CPUS:
        warnings.append(f"{res.cpus} CPU (recommended {RECOMMENDED_CPUS})")
    if res.memory_bytes < MIN_MEMORY * MEMORY_SLACK:
        problems.append(f"{_gib(res.memory_bytes)} memory (minimum {_gib(MIN_MEMORY)})")
    elif res.memory_bytes < RECOMMENDED_MEMORY * MEMORY_SLACK:
        warnings.append(f"{_gib(res.memory_bytes)} memory (recommended {_gib(RECOMMENDED_MEMORY)})")
    if res.disk_free_bytes < MIN_DISK:
        problems.append(f"{_gib(res.disk_free_bytes)} free on {res.disk_path} (minimum {_gib(MIN_DISK)})")
    return problems, warnings


REMEDY = (
    f"give the VM at least {MIN_CPUS} vCPU, {_gib(MIN_MEMORY)} memory and {_gib(MIN_DISK)} free under "
    f"{DATA_DIR} (grow the disk and the root volume, or rebuild the template with hardware.disk_gib >= "
    f"{sizing.MIN_DISK_GIB}), then reboot"
)


def run(ctx: Context) -> None:
    """Fail below the minimum; log a warning below the recommended."""
    res = measure(ctx)
    problems, warnings = evaluate(res)
    if problems:
        raise PermanentFailure("not enough resources for K3s and Arc: " + "; ".join(problems), REMEDY)
    for warning in warnings:
        LOG.warning("below the recommended size: %s", warning)
    ctx.progress(f"{res.cpus} CPU, {_gib(res.memory_bytes)} memory, {_gib(res.disk_free_bytes)} free")


def check(ctx: Context) -> CheckResult:
    """The same comparison, as one doctor line."""
    res = measure(ctx)
    problems, warnings = evaluate(res)
    summary = f"{res.cpus} CPU, {_gib(res.memory_bytes)} memory, {_gib(res.disk_free_bytes)} free"
    if problems:
        return CheckResult(False, "below the minimum: " + "; ".join(problems), REMEDY)
    if warnings:
        return CheckResult(True, f"{summary} (below the recommended: {'; '.join(warnings)})")
    return CheckResult(True, summary)
