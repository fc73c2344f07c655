"""Where a command's steps go: the `--events` JSON Lines file and the progress display on stderr.

One API for every long-running command (build, deploy, and the day-2 commands):

    rec = cli_common.recorder()                 # from the click context: --events PATH, -v/-q, TTY
    with rec.step("validators", total=7):       # step_started ... step_finished (duration, ok)
        ...
    with rec.step("clone", vm="edge-01", announce=False) as step:
        step.update("waiting for the clone task")
        step.fields["moid"] = "vm-42"           # carried in the step_finished line

Each line of the events file is one JSON object: `time` (UTC ISO 8601), `command`, `event`
(`command_started`, `step_started`, `step_finished`, `error`, `command_finished`), and for steps `step`,
`duration_seconds`, `ok`, `error` plus the step's own fields (`vm`, `validator`, ...). The file is
appended to, so a pipeline can collect build and deploy in one file. Secrets never reach it: callers
pass names and ids only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from builder.progress import RAISED, Display, NullDisplay


class EventsError(Exception):
    """The events file cannot be written."""


@dataclass
class StepHandle:
    """A running step: `update()` shows progress, `fields` go into its finished line, `fail()` marks it."""

    name: str
    label: str
    key: int
    display: Display
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def update(self, text: str) -> None:
        """Show what the step is doing now (progress display only)."""
        self.display.update(self.key, f"{self.label}: {text}")

    def fail(self, message: str) -> None:
        """Mark the step failed without raising (e.g. a validator that rejected its file)."""
        self.error = message


class Recorder:
    """Steps of one command, to the events file (when given) and the progress display."""

    def __init__(self, command: str, events_path: Path | None = None, display: Display | None = None) -> None:
        self.command = command
        self.display: Display = display or NullDisplay()
        self._lock = threading.Lock()
        self._keys = 0
        self._sink: IO[str] | None = None
        self.failed = False
        if events_path is not None:
            try:
                events_path.parent.mkdir(parents=True, exist_ok=True)
                self._sink = events_path.open("a", encoding="utf-8")
            except OSError as exc:
                raise EventsError(f"cannot write the events file {events_path}: {exc.strerror}") from None
        self.emit("command_started")

    def emit(self, event: str, **fields: Any) -> None:
        """Append one JSON line (no-op without an events file)."""
        if self._sink is None:
            return
        line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "command": self.command}
        line["event"] = event
        line.update(fields)
        text = json.dumps(line, default=str, sort_keys=False)
        with self._lock:
            self._sink.write(text + "\n")
            self._sink.flush()

    @contextmanager
    def step(
        self, name: str, *, label: str | None = None, announce: bool = True, **fields: Any
    ) -> Iterator[StepHandle]:
        """A step from start to finish; an exception marks it failed and propagates."""
        with self._lock:
            self._keys += 1
            key = self._keys
        shown = label or " ".join([name, *(str(v) for v in fields.values())])
        handle = StepHandle(name, shown, key, self.display)
        self.emit("step_started", step=name, **fields)
        self.display.start(key, shown, announce=announce)
        started = time.monotonic()
        raised = False
        try:
            yield handle
        except BaseException as exc:
            raised = True
            handle.error = handle.error or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise
        finally:
            seconds = time.monotonic() - started
            ok = handle.error is None
            self.failed = self.failed or not ok
            shown_error = RAISED if raised else handle.error
            self.display.finish(key, shown, ok=ok, seconds=seconds, announce=announce, error=shown_error)
            self.emit(
                "step_finished",
                step=name,
                **fields,
                duration_seconds=round(seconds, 3),
                ok=ok,
                **({"error": handle.error} if handle.error else {}),
                **handle.fields,
            )

    def error(self, message: str, exit_code: int) -> None:
        """The command is failing with `message` (called by cli_common.fail)."""
        self.failed = True
        self.emit("error", message=message, exit_code=exit_code)

    def close(self) -> None:
        """`command_finished`, stop the display, close the file."""
        self.display.stop()
        self.emit("command_finished", ok=not self.failed)
        if self._sink is not None:
            self._sink.close()
            self._sink = None


NULL = Recorder("none")
