"""firstboot's state on disk, all under /var/lib/arcbake (below `--root`).

| path | meaning |
| --- | --- |
| `instances/<instance-id>/<step>.done` | the step finished for this clone (atomic, after success) |
| `status.json` | the last status (`firstboot.contract.Status`), rewritten after every transition |
| `done` | the whole run finished; the systemd unit's `ConditionPathExists=!/var/lib/arcbake/done` checks it |
| `instances/<instance-id>/secrets.json` | the secrets held for this clone, 0600 (`firstboot.secretstore`) |
| `config.json` | the decoded config (no secrets) for doctor and status |
| `run.lock` | flock held by a running `firstboot run` |

A new clone has a new instance id, so its stamps start empty even if the template carried a directory.
Every directory gets an explicit mode whatever the umask (this one 0700: secrets live below it); state
files are opened without following symlinks (`firstboot.fsutil`), so a symlink planted as `run.lock` or
`status.json` is refused instead of truncating or leaking its target.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from firstboot.contract import Status
from firstboot.fsutil import (
    STATE_DIR,
    atomic_write,
    guest_path,
    make_dirs,
    open_state,
    private_dir,
    read_state,
)
from firstboot.statusview import STATUS_FILE


class LockedError(Exception):
    """Another `firstboot run` holds the lock."""


class StateStore:
    """Stamps, status and the done file below `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = guest_path(root, STATE_DIR)
        self.status_path = guest_path(root, STATUS_FILE)
        self.done_path = self.dir / "done"
        self.lock_path = self.dir / "run.lock"
        self._lock: int | None = None

    def _ensure_dir(self) -> None:
        # secrets live here too: keep the directory root-only (and refuse a symlink in its place).
        private_dir(self.dir)

    def instance_dir(self, instance_id: str) -> Path:
        """The stamp directory of one clone."""
        return self.dir / "instances" / instance_id

    def stamp_path(self, instance_id: str, step: str) -> Path:
        """`instances/<id>/<step>.done`."""
        return self.instance_dir(instance_id) / f"{step}.done"

    def is_stamped(self, instance_id: str, step: str) -> bool:
        """True when `step` finished for this instance."""
        return self.stamp_path(instance_id, step).is_file()

    def stamp(self, instance_id: str, step: str, seconds: float) -> None:
        """Record that `step` finished; atomic, so a crash leaves either no stamp or a whole one."""
        self._ensure_dir()
        make_dirs(self.instance_dir(instance_id), 0o700)
        body = {"step": step, "finished": datetime.now(UTC).isoformat(), "seconds": round(seconds, 3)}
        atomic_write(self.stamp_path(instance_id, step), json.dumps(body) + "\n", mode=0o600)

    def stamped(self, instance_id: str) -> list[str]:
        """Names of the steps stamped for this instance."""
        folder = self.instance_dir(instance_id)
        return sorted(p.name[: -len(".done")] for p in folder.glob("*.done")) if folder.is_dir() else []

    def write_status(self, status: Status) -> None:
        """Rewrite status.json atomically."""
        self._ensure_dir()
        atomic_write(self.status_path, status.to_json() + "\n", mode=0o644)

    def read_status(self) -> Status | None:
        """The last status, or None when firstboot has not run (or the file is unreadable)."""
        try:
            return Status.model_validate_json(read_state(self.status_path))
        except (OSError, ValidationError):
            return None

    def mark_done(self, instance_id: str) -> None:
        """Write the done file the systemd unit checks."""
        self._ensure_dir()
        atomic_write(self.done_path, instance_id + "\n", mode=0o644)

    def done_instance(self) -> str | None:
        """The instance id recorded in the done file, or None."""
        try:
            return read_state(self.done_path).decode("utf-8", errors="replace").strip() or None
        except OSError:
            return None

    def clear_done(self) -> None:
        """Remove the done file (a run that is starting again is not done)."""
        self.done_path.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the run lock without waiting; LockedError when another run holds it.

        The lock file is opened with O_NOFOLLOW and without O_TRUNC, and refused unless it is a regular
        file with one link: a symlink or hard link planted as `run.lock` is never followed or truncated.
        """
        self._ensure_dir()
        fd = open_state(self.lock_path, create=True, mode=0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockedError(f"another firstboot run holds {self.lock_path}") from None
        # Ours now (a regular file, locked): record who holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.time():.0f}\n".encode(), 0)
        self._lock = fd

    def release(self) -> None:
        """Release the run lock."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None
