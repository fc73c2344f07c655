"""The one subprocess wrapper of the project (cloud-init's `subp` idea).

argv lists only, never a shell; a timeout on every call; one exception that carries the description,
command, exit code, stdout and stderr; secrets are redacted before anything is logged or raised, and a
secret found in argv is refused outright (argv is readable by every user through /proc).
builder imports this module too: one wrapper for the whole project.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from firstboot.fsutil import private_dir

LOG = logging.getLogger(__name__)

REDACTED = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every non-trivial secret in `text` with `***`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class Result:
    """A finished command: redacted argv and outputs."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str


class ProcessExecutionError(Exception):
    """A command failed, timed out or could not start. Every field is already redacted."""

    def __init__(
        self,
        description: str,
        cmd: Sequence[str],
        exit_code: int | None = None,
        stdout: str = "",
        stderr: str = "",
        reason: str = "",
    ) -> None:
        self.description = description
        self.cmd = tuple(cmd)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.reason = reason
        detail = reason or f"exit code {exit_code}"
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        super().__init__(f"{description}: {detail}" + (f": {tail}" if tail else ""))

    @property
    def timed_out(self) -> bool:
        """True when the command was killed at its timeout."""
        return self.reason.startswith("timed out")

    @property
    def not_found(self) -> bool:
        """True when the program could not be found or executed."""
        return self.reason.startswith("not found")


def _spawn(
    argv: Sequence[str],
    *,
    stdin_data: bytes | None,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    # A new session lets a timeout kill the whole process tree (packer and its plugins, az and python).
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise
    return proc.returncode, out, err


def _spawn_to_files(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float,
    output_dir: Path,
) -> tuple[int, bytes, bytes]:
    # stdout/stderr in files, not pipes: a child that outlives a crashed caller (SIGKILL of firstboot
    # during `az connectedk8s connect`) must not die of SIGPIPE on its next progress line.
    private_dir(output_dir)
    out_path, err_path = output_dir / "stdout", output_dir / "stderr"
    # O_NOFOLLOW: a symlink planted as stdout must not truncate its target.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with (
        os.fdopen(os.open(out_path, flags, 0o600), "wb") as out_f,
        os.fdopen(os.open(err_path, flags, 0o600), "wb") as err_f,
    ):
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    out, err = out_path.read_bytes(), err_path.read_bytes()
    # Raw (unredacted) output must not stay on disk once it has been read.
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    return proc.returncode, out, err


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    # The child leads its own session (start_new_session), so its pid is the group id of its tree.
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return


def _not_started(description: str, shown: list[str]) -> ProcessExecutionError:
    return ProcessExecutionError(description, shown, reason=f"not found or not executable: {shown[0]}")


def _prepare(
    argv: Sequence[str], secrets: Iterable[str], description: str
) -> tuple[list[str], list[str], str, list[str]]:
    """argv as strings, the non-empty secrets, the description, and argv as it may be shown.

    Raises ValueError when a secret (of 3 characters or more) appears in argv: argv is visible to
    every user of the machine through /proc.
    """
    args = [os.fspath(a) for a in argv]
    secret_list = [s for s in secrets if s]
    for arg in args:
        if any(s in arg for s in secret_list if len(s) >= 3):
            raise ValueError(f"refusing to pass a secret on the command line of {args[0]}")
    shown = [redact(a, secret_list) for a in args]
    return args, secret_list, description or f"running {args[0]}", shown


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    description: str = "",
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    secrets: Iterable[str] = (),
    check: bool = True,
    ok_codes: Iterable[int] = (0,),
    output_dir: Path | None = None,
) -> Result:
    """Run `argv` and return its redacted result.

    Raises ProcessExecutionError when the command cannot start, times out, or (with `check`) exits with
    a code not in `ok_codes`. Raises ValueError when a secret appears in argv. With `output_dir`, the
    child's stdout and stderr go to files there (0600) instead of pipes, so a long operation survives a
    crash of the caller (no stdin then).
    """
    argv, secret_list, description, shown = _prepare(argv, secrets, description)
    stdin_data = input.encode() if isinstance(input, str) else input
    LOG.debug("exec %s (timeout %ss)", shown, timeout)
    try:
        if output_dir is not None:
            code, out_b, err_b = _spawn_to_files(
                argv, env=env, cwd=cwd, timeout=timeout, output_dir=output_dir
            )
        else:
            code, out_b, err_b = _spawn(argv, stdin_data=stdin_data, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ProcessExecutionError(description, shown, reason=f"timed out after {timeout:g}s") from exc
    except (FileNotFoundError, PermissionError) as exc:
        raise _not_started(description, shown) from exc
    out = redact(out_b.decode("utf-8", "replace"), secret_list)
    err = redact(err_b.decode("utf-8", "replace"), secret_list)
    if check and code not in set(ok_codes):
        raise ProcessExecutionError(description, shown, code, out, err)
    return Result(tuple(shown), code, out, err)


# Streaming -----------------------------------------------------------------------------------------
# For long-running children whose output is shown as it comes (builder's Packer driver): stdout and
# stderr merged, each line redacted before the caller sees it, the same timeout and argv rules as `run`.
# Ctrl-C is forwarded as SIGINT to the child's process group so it can clean up (Packer deletes its
# half-built VM), then KeyboardInterrupt is raised once the child has exited; a second Ctrl-C kills it.


def _open_stream(
    argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )


def stream(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None],
    description: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    secrets: Iterable[str] = (),
    check: bool = True,
    grace: float = 600.0,
) -> Result:
    """Run `argv`, calling `on_line` with each redacted output line as it arrives.

    On timeout the child's group gets SIGINT, then SIGKILL after `grace` seconds, and
    ProcessExecutionError is raised. On KeyboardInterrupt the child's group gets SIGINT, the child is
    waited for (up to `grace`, streaming its cleanup output), and KeyboardInterrupt is re-raised.
    `Result.stdout` holds the last 50 lines.
    """
    argv, secret_list, description, shown = _prepare(argv, secrets, description)
    LOG.debug("exec (streamed) %s (timeout %ss)", shown, timeout)
    try:
        proc = _open_stream(argv, env=env, cwd=cwd)
    except (FileNotFoundError, PermissionError) as exc:
        raise _not_started(description, shown) from exc
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        for raw in proc.stdout or ():
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        lines.put(None)

    threading.Thread(target=reader, name=f"stream-{Path(argv[0]).name}", daemon=True).start()
    tail: collections.deque[str] = collections.deque(maxlen=50)
    deadline = time.monotonic() + timeout
    stop_by: float | None = None  # set once the child has been asked to stop
    interrupted = False
    timed_out = False
    while True:
        try:
            now = time.monotonic()
            if stop_by is None and now > deadline:
                timed_out = True
                _signal_group(proc, signal.SIGINT)
                stop_by = now + grace
            elif stop_by is not None and now > stop_by:
                _signal_group(proc, signal.SIGKILL)
                stop_by = now + 3600
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            shown_line = redact(line, secret_list)
            tail.append(shown_line)
            on_line(shown_line)
        except KeyboardInterrupt:
            if interrupted:
                _signal_group(proc, signal.SIGKILL)
            else:
                interrupted = True
                LOG.debug("interrupted: forwarding SIGINT to %s", shown[0])
                _signal_group(proc, signal.SIGINT)
                stop_by = time.monotonic() + grace
    code = proc.wait()
    out = "\n".join(tail)
    if interrupted:
        raise KeyboardInterrupt
    if timed_out:
        raise ProcessExecutionError(
            description, shown, code, out, out, reason=f"timed out after {timeout:g}s"
        )
    if check and code != 0:
        raise ProcessExecutionError(description, shown, code, out, out)
    return Result(tuple(shown), code, out, "")
