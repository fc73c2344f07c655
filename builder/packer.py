"""Our Packer driver: find Packer, `init` (>= 1.7), `validate`, and `build -machine-readable` streamed.

Machine-readable lines are `timestamp,target,type,data...`; inside data, commas are written as
`%!(PACKER_COMMA)` and newlines as the two characters `\\n` (and `\\r`). We parse each line into an
`Event`, show `ui say/message/error` as progress on stderr (current step and elapsed time), collect the
`artifact` lines, and keep the full (redacted) log in the build dir.

Credentials reach Packer as `PKR_VAR_*` environment only: never argv, never a file. The child runs in its
own process group; Ctrl-C is forwarded to it as SIGINT so Packer deletes its half-built VM, and the
caller then exits 130 (`firstboot.subp.stream` does the forwarding).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from builder.events import Recorder
from firstboot import subp
from firstboot.fsutil import make_dirs

LOG = logging.getLogger(__name__)

COMMA = "%!(PACKER_COMMA)"
ON_ERROR_CHOICES = ("cleanup", "abort")
VERSION_TIMEOUT = 30.0
INIT_TIMEOUT = 600.0
VALIDATE_TIMEOUT = 120.0
DEFAULT_BUILD_TIMEOUT = 4 * 3600.0


class PackerError(Exception):
    """Packer is missing, too old, or a Packer command failed; the message is one line."""


@dataclass(frozen=True)
class Event:
    """One machine-readable line."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def ui_level(self) -> str | None:
        """`say`, `message` or `error` for a `ui` line, else None."""
        return self.data[0] if self.type == "ui" and self.data else None

    @property
    def text(self) -> str:
        """The message of a ui line (data after the level), or all data joined."""
        if self.type == "ui":
            return ",".join(self.data[1:])
        return ",".join(self.data)


def unescape(value: str) -> str:
    """Undo Packer's machine-readable escaping (`%!(PACKER_COMMA)`, `\\n`, `\\r`)."""
    return value.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def escape(value: str) -> str:
    """Packer's machine-readable escaping of one data field (hashicorp/packer packer/ui.go,
    `MachineReadableUi.Machine`: `,` -> `%!(PACKER_COMMA)`, then CR -> `\\r`, then LF -> `\\n`)."""
    return value.replace(",", COMMA).replace("\r", "\\r").replace("\n", "\\n")


def redaction_forms(secrets: Iterable[str]) -> list[str]:
    """Every form a secret can take in Packer's output: as is, and escaped as a machine-readable field.

    A raw line is redacted with both (so `packer-build.log` never holds `pa%!(PACKER_COMMA)ss`), and each
    field is redacted again after un-escaping (so what reaches the terminal never holds `pa,ss`).
    """
    out: list[str] = []
    for secret in secrets:
        out += [secret, escape(secret)] if escape(secret) != secret else [secret]
    return out


def parse_line(line: str, secrets: Iterable[str] = ()) -> Event | None:
    """Parse one machine-readable line; None for anything else (a plugin's stray stderr line).

    Each field is un-escaped and then redacted of `secrets`: a secret that Packer escaped can only be
    recognised once the escaping is undone.
    """
    parts = line.rstrip("\r\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit() or not parts[2]:
        return None
    data = tuple(subp.redact(unescape(p), secrets) for p in parts[3:])
    return Event(int(parts[0]), parts[1], parts[2], data)


@dataclass
class Artifact:
    """One `artifact,N,...` group."""

    index: int
    builder_id: str = ""
    id: str = ""
    string: str = ""
    files: list[str] = field(default_factory=list)


@dataclass
class BuildOutcome:
    """What a `packer build` said."""

    artifacts: list[Artifact] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    last_step: str = ""
    seconds: float = 0.0


class Collector:
    """Accumulates events of one build into a BuildOutcome."""

    def __init__(self) -> None:
        self.outcome = BuildOutcome()
        self._by_index: dict[int, Artifact] = {}

    def feed(self, event: Event) -> None:
        """Take one event."""
        if event.ui_level == "say":
            text = event.text.strip()
            if text.startswith("==>") or text.startswith("-->"):
                self.outcome.last_step = text.lstrip("=-> ").strip()
        elif event.ui_level == "error":
            self.outcome.errors.append(event.text.strip())
        elif event.type == "artifact" and len(event.data) >= 2 and event.data[0].isdigit():
            index = int(event.data[0])
            art = self._by_index.get(index)
            if art is None:
                art = self._by_index[index] = Artifact(index)
                self.outcome.artifacts.append(art)
            key, values = event.data[1], event.data[2:]
            value = values[0] if values else ""
            if key == "builder-id":
                art.builder_id = value
            elif key == "id":
                art.id = value
            elif key == "string":
                art.string = value
            elif key == "file" and len(values) >= 2:
                art.files.append(values[1])


def find_packer(environ: Mapping[str, str]) -> str:
    """The Packer executable: `$PACKER` if set, else `packer` on PATH."""
    explicit = environ.get("PACKER")
    if explicit:
        return explicit
    found = shutil.which("packer", path=environ.get("PATH"))
    if not found:
        raise PackerError("packer not found on PATH (install it: bash tools/dev.sh setup)")
    return found


def version(packer: str, env: Mapping[str, str]) -> tuple[int, int, int]:
    """Packer's version as a tuple (`Packer v1.6.6` -> (1, 6, 6))."""
    from builder.render_context import parse_packer_version

    try:
        result = subp.run([packer, "version"], timeout=VERSION_TIMEOUT, env=env, description="packer version")
    except subp.ProcessExecutionError as exc:
        raise PackerError(str(exc)) from None
    parsed = parse_packer_version(result.stdout)
    if parsed is None:
        raise PackerError(f"cannot read the Packer version from {result.stdout.strip()[:80]!r}")
    return parsed


def child_env(environ: Mapping[str, str], pkr_vars: Mapping[str, str]) -> dict[str, str]:
    """Packer's environment: ours without VSPHERE_* (Packer gets them as PKR_VAR_*), plus `pkr_vars`."""
    env = {k: v for k, v in environ.items() if not k.startswith(("VSPHERE_", "PKR_VAR_"))}
    # No update check against checkpoint.hashicorp.com: image CI is often offline, and so are tests.
    env["CHECKPOINT_DISABLE"] = "1"
    env.update(pkr_vars)
    return env


def vsphere_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """`PKR_VAR_vsphere_*` from `VSPHERE_*` (host:port kept as Packer's vcenter_server accepts it)."""
    from builder.vsphere.connection import Credentials

    creds = Credentials.from_env(environ)
    return {
        "PKR_VAR_vsphere_server": creds.server if creds.port != 443 else creds.host,
        "PKR_VAR_vsphere_user": creds.user,
        "PKR_VAR_vsphere_password": creds.password,
        "PKR_VAR_vsphere_insecure": "true" if creds.insecure else "false",
    }


class Progress:
    """Packer's ui lines on stderr with the elapsed time, and each `==>` stage as a step of `recorder`
    (events file, progress display). -q (`quiet`) prints nothing; the stages still reach the events file.
    NO_COLOR and non-TTYs get plain text."""

    def __init__(
        self, stream: IO[str] | None = None, quiet: bool = False, recorder: Recorder | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.recorder = recorder
        self.started = time.monotonic()
        self.color = recorder is None and "NO_COLOR" not in os.environ and self.stream.isatty()
        self._stage = ExitStack()

    def elapsed(self) -> str:
        """`mm:ss` since the start."""
        secs = int(time.monotonic() - self.started)
        return f"{secs // 60:02d}:{secs % 60:02d}"

    def _next_stage(self, text: str) -> None:
        if self.recorder is None:
            return
        self._stage.close()
        # "==> vsphere-clone.demo: Cloning VM..." -> "Cloning VM"
        title = text.lstrip().removeprefix("==>").strip()
        title = title.split(": ", 1)[-1].strip().rstrip(".") or title
        self._stage.enter_context(
            self.recorder.step("packer stage", label=f"packer: {title}", announce=False, stage=title)
        )

    def close(self, error: BaseException | None = None) -> None:
        """End the last stage (failed when `error` is given)."""
        if error is None:
            self._stage.close()
        else:
            self._stage.__exit__(type(error), error, error.__traceback__)

    def show(self, event: Event) -> None:
        """Print a ui line; a `==>` line starts the next stage."""
        if event.ui_level is None:
            return
        text = event.text.strip("\n")
        if not text.strip():
            return
        if text.lstrip().startswith("==>"):
            self._next_stage(text)
        if self.quiet:
            return
        prefix = f"[{self.elapsed()}] "
        if self.color and event.ui_level == "error":
            text = f"\x1b[31m{text}\x1b[0m"
        elif self.color and text.lstrip().startswith("==>"):
            text = f"\x1b[1m{text}\x1b[0m"
        for line in text.splitlines():
            if self.recorder is not None:
                self.recorder.display.print(prefix + line)
            else:
                self.stream.write(prefix + line + "\n")
        if self.recorder is None:
            self.stream.flush()


def init(packer: str, workdir: Path, env: Mapping[str, str], secrets: Iterable[str]) -> None:
    """`packer init .` (Packer >= 1.7 installs the plugins named in required_plugins)."""
    forms = redaction_forms(secrets)
    try:
        subp.run([packer, "init", "."], timeout=INIT_TIMEOUT, env=env, cwd=workdir, secrets=forms)
    except subp.ProcessExecutionError as exc:
        raise PackerError(f"packer init failed: {_last_line(exc, forms)}") from None


def validate(packer: str, workdir: Path, only: str, env: Mapping[str, str], secrets: Iterable[str]) -> None:
    """`packer validate -only=SOURCE .`"""
    argv = [packer, "validate", f"-only={only}", "."]
    forms = redaction_forms(secrets)
    try:
        subp.run(argv, timeout=VALIDATE_TIMEOUT, env=env, cwd=workdir, secrets=forms)
    except subp.ProcessExecutionError as exc:
        raise PackerError(f"packer validate rejected the build: {_last_line(exc, forms)}") from None


def _last_line(exc: subp.ProcessExecutionError, secrets: Iterable[str] = ()) -> str:
    for text in (exc.stderr, exc.stdout):
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        # HCL diagnostics: "* the problem" lines carry the message, "(source code not available)" does not.
        problems = [ln[2:] for ln in lines if ln.startswith("* ")]
        if problems:
            return "; ".join(problems)
        for line in reversed(lines):
            event = parse_line(line, secrets)
            if event is None:
                return line
            if event.ui_level == "error":
                return event.text.strip().splitlines()[-1] if event.text.strip() else line
    return exc.reason or f"exit code {exc.exit_code}"


def build(
    packer: str,
    workdir: Path,
    *,
    only: str,
    env: Mapping[str, str],
    secrets: Iterable[str],
    log_path: Path,
    timeout: float = DEFAULT_BUILD_TIMEOUT,
    on_error: str = "cleanup",
    progress: Progress | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> BuildOutcome:
    """`packer build -machine-readable`, streamed; the full log goes to `log_path` (0600, redacted).

    Raises PackerError (with Packer's own last error) on failure or timeout; KeyboardInterrupt after
    Packer has cleaned up when the user pressed Ctrl-C.
    """
    if on_error not in ON_ERROR_CHOICES:
        raise PackerError(f"-on-error must be one of {', '.join(ON_ERROR_CHOICES)}")
    argv = [packer, "build", "-machine-readable", f"-on-error={on_error}", f"-only={only}", "."]
    plain = list(secrets)
    forms = redaction_forms(plain)
    collector = Collector()
    started = time.monotonic()
    make_dirs(log_path.parent)
    # A fresh 0600 file: a symlink planted as the log is replaced, never followed into its target.
    log_path.unlink(missing_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as log:

        def on_line(line: str) -> None:
            log.write(line + "\n")
            log.flush()
            event = parse_line(line, plain)
            if event is None:
                LOG.debug("packer: %s", line)
                return
            collector.feed(event)
            if progress is not None:
                progress.show(event)
            if on_event is not None:
                on_event(event)

        try:
            subp.stream(
                argv,
                timeout=timeout,
                on_line=on_line,
                description="packer build",
                env=env,
                cwd=workdir,
                # Raw lines (the log, stray stderr) are redacted of the escaped forms too.
                secrets=forms,
            )
        except BaseException as exc:
            if progress is not None:
                progress.close(exc)
            if not isinstance(exc, subp.ProcessExecutionError):
                raise

            collector.outcome.seconds = time.monotonic() - started
            if exc.timed_out:
                raise PackerError(f"packer build timed out after {timeout:g}s (log: {log_path})") from None
            errors = collector.outcome.errors
            last = _last_line(exc, forms)
            if errors and errors[-1].strip():
                last = errors[-1].strip().splitlines()[-1]
            raise PackerError(f"packer build failed: {last} (log: {log_path})") from None
    if progress is not None:
        progress.close()
    collector.outcome.seconds = time.monotonic() - started
    return collector.outcome
