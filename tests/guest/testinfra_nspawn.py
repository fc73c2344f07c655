"""A testinfra connection backend for a running systemd-nspawn guest: `--hosts=nspawn://<init pid>`.

testinfra has no nspawn backend, and a second `systemd-nspawn -D ROOT` cannot enter a directory a booted
guest holds. `nsenter` into the namespaces of the guest's PID 1 (mount, UTS, IPC, network, PID; its root
and working directory) runs each command inside the booted guest, so `systemctl` talks to the guest's
systemd. Load it with `pytest -p guest.testinfra_nspawn` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

from typing import Any

import testinfra.backend
from testinfra.backend import base

NSENTER = "nsenter --target %s --mount --uts --ipc --net --pid --root --wd /bin/sh -c %s"


class NspawnBackend(base.BaseBackend):  # type: ignore[misc]
    """Run commands in the booted guest whose PID 1 has host PID `name`."""

    NAME = "nspawn"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        if not name.isdigit():
            raise ValueError(f"nspawn://PID expects the host PID of the guest's init, not {name!r}")
        self.pid = name
        super().__init__(name, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        """Run `command` (testinfra-quoted with `args`) in the guest through /bin/sh."""
        cmd = self.get_command(command, *args)
        out = self.run_local(NSENTER, self.pid, cmd)
        out.command = self.encode(cmd)
        return out


testinfra.backend.BACKENDS["nspawn"] = f"{__name__}.NspawnBackend"
