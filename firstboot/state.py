"""firstboot's state on disk, all under /var/lib/arcbake (below `--root`).

| path | meaning |
| --- | --- |
| `instances/<instance-id>/<step>.done` | the step finished for this clone (atomic, after success) |
| `status.json` | the last status (`firstboot.contract.Status`), rewritten after every transition |
| `done` | the whole run finished; the systemd unit's `ConditionPathExists=!/var/lib/arcbake/done` checks it |
| `secrets.json` | the secrets, 0600 in a 0700 directory (written by the metadata step) |
| `config.json` | the decoded config (no secrets) for doctor and status |
| `run.lock` | flock held by a running `firstboot run` |

A new clone has a new instance id, so its stamps start empty even if the template carried a directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from firstboot.contract import Status
from firstboot.sources import atomic_write
from firstboot.step import guest_path

STATE_DIR = "/var/lib/arcbake"


class LockedError(Exception):
    """Another `firstboot run` holds the lock."""


class StateStore:
    """Stamps, status and the done file below `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = guest_path(root, STATE_DIR)
        self.status_path = self.dir / "status.json"
        self.done_path = self.dir / "done"
        self.lock_path = self.dir / "run.lock"
        self._lock: IO[str] | None = None

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # secrets.json lives here too: keep the directory root-only.
        self.dir.chmod(0o700)

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
            return Status.model_validate_json(self.status_path.read_bytes())
        except (OSError, ValidationError):
            return None

    def mark_done(self, instance_id: str) -> None:
        """Write the done file the systemd unit checks."""
        self._ensure_dir()
        atomic_write(self.done_path, instance_id + "\n", mode=0o644)

    def done_instance(self) -> str | None:
        """The instance id recorded in the done file, or None."""
        try:
            return self.done_path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def clear_done(self) -> None:
        """Remove the done file (a run that is starting again is not done)."""
        self.done_path.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the run lock without waiting; LockedError when another run holds it."""
        self._ensure_dir()
        handle = self.lock_path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise LockedError(f"another firstboot run holds {self.lock_path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {time.time():.0f}\n")
        handle.flush()
        self._lock = handle

    def release(self) -> None:
        """Release the run lock."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
