"""When this process was exec'd, on the clock the API and ARM doubles read (stdlib only).

The systemctl and az doubles are Python programs that firstboot runs as it would run systemd's and Azure's;
their own interpreter start and work are not firstboot's. They count a simulated latency from their exec
(systemctl: K3s starts when real systemctl returns, in milliseconds) and log what they cost beyond it, so
the overhead bench charges firstboot only with its own time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_started() -> float:
    """When this process was exec'd, on the `time.monotonic()` clock every process of this machine shares.

    /proc/self/stat's starttime counts clock ticks since boot (CLOCK_BOOTTIME); it is rounded up one tick
    so the moment is never earlier than the exec, and a double never makes anything look faster than it was.
    A forked child has its own starttime: call this before forking.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    # Field 22, counted after the ")" that ends the command name (which may itself hold spaces).
    start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - (start_ticks + 1) / ticks
    return time.monotonic() - max(age, 0.0)
