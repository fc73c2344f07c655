"""Progress on stderr: rich spinners on a terminal, plain lines elsewhere (CI logs), nothing with -q.

- a TTY (and TERM not `dumb`): one live line per running step with its elapsed time (rich, transient),
  and a `✓`/`✗` line when an announced step ends; rich leaves colour out when NO_COLOR is set;
- not a TTY: `STEP ...` when an announced step starts and `STEP: ok (1.2s)` when it ends, plain text;
  steps that are not announced (one per VM, per validator) only with -v, so each VM is printed once
  (by the command's result table);
- -q: nothing.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import IO, Any, Protocol

# The `error` a Recorder passes to finish() when the step ended with an exception.
RAISED = "\x00raised"


class Display(Protocol):
    """What the Recorder drives."""

    def start(self, key: int, label: str, *, announce: bool) -> None: ...
    def update(self, key: int, text: str) -> None: ...
    def finish(
        self, key: int, label: str, *, ok: bool, seconds: float, announce: bool, error: str | None
    ) -> None: ...
    def print(self, line: str) -> None: ...
    def stop(self) -> None: ...


class NullDisplay:
    """Shows nothing (-q, library use)."""

    def start(self, key: int, label: str, *, announce: bool) -> None:
        """Nothing."""

    def update(self, key: int, text: str) -> None:
        """Nothing."""

    def finish(
        self, key: int, label: str, *, ok: bool, seconds: float, announce: bool, error: str | None
    ) -> None:
        """Nothing."""

    def print(self, line: str) -> None:
        """Nothing."""

    def stop(self) -> None:
        """Nothing."""


class PlainDisplay:
    """Plain lines for logs: announced steps always, the others with -v."""

    def __init__(self, stream: IO[str] | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def start(self, key: int, label: str, *, announce: bool) -> None:
        """`LABEL ...`"""
        if announce or self.verbose:
            self._line(f"{label} ...")

    def update(self, key: int, text: str) -> None:
        """Only with -v (a CI log wants milestones, not every poll)."""
        if self.verbose:
            self._line(text)

    def finish(
        self, key: int, label: str, *, ok: bool, seconds: float, announce: bool, error: str | None
    ) -> None:
        """`LABEL: ok (1.2s)` or `LABEL: failed (1.2s)`; a step whose exception ends the command is
        left to the command's one `error:` line."""
        if error == RAISED:
            return
        if announce or self.verbose or not ok:
            self._line(f"{label}: {'ok' if ok else 'failed'} ({seconds:.1f}s)")

    def print(self, line: str) -> None:
        """A line of streamed output (Packer's)."""
        self._line(line)

    def stop(self) -> None:
        """Nothing to stop."""


class RichDisplay:
    """Live spinners (transient) for running steps; finished announced steps stay as one line. The live
    area exists only while a step runs, so a command's results never print under a spinner."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.progress: Any = None
        self._tasks: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _live(self) -> Any:
        if self.progress is None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
        return self.progress

    def start(self, key: int, label: str, *, announce: bool) -> None:
        """A spinner line for the step."""
        with self._lock:
            self._tasks[key] = self._live().add_task(label, total=None)

    def update(self, key: int, text: str) -> None:
        """New text on the step's spinner line."""
        with self._lock:
            task = self._tasks.get(key)
            if task is not None:
                self._live().update(task, description=text)

    def finish(
        self, key: int, label: str, *, ok: bool, seconds: float, announce: bool, error: str | None
    ) -> None:
        """Remove the spinner; announced steps and failures leave one line (not a raised one: the
        command's `error:` line says it)."""
        from rich.text import Text

        with self._lock:
            task = self._tasks.pop(key, None)
            if task is not None:
                self._live().remove_task(task)
            if error != RAISED and (announce or not ok):
                mark, style = ("✓", "green") if ok else ("✗", "red")
                line = Text(f"{mark} ", style=style)
                line.append(f"{label} ({seconds:.1f}s)")
                self.console.print(line)
            if not self._tasks:
                self._stop()

    def print(self, line: str) -> None:
        """A line of streamed output above the spinners."""
        from rich.text import Text

        self.console.print(Text(line))

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def stop(self) -> None:
        """Stop the live display."""
        with self._lock:
            self._stop()


def interactive(stream: IO[str] | None = None) -> bool:
    """True when `stream` (stderr) is a terminal that can redraw lines."""
    stream = stream or sys.stderr
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


def make_display(verbosity: int, stream: IO[str] | None = None) -> Display:
    """The display for a verbosity (-v minus -q): nothing when quiet, rich on a terminal, else plain."""
    if verbosity < 0:
        return NullDisplay()
    if interactive(stream):
        return RichDisplay(stream)
    return PlainDisplay(stream, verbose=verbosity > 0)
