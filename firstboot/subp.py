"""The one subprocess wrapper of the project (cloud-init's `subp` idea).

argv lists only, never a shell; a timeout on every call; one exception that carries the description,
command, exit code, stdout and stderr; secrets are redacted before anything is logged or raised, and a
secret found in argv is refused outright (argv is readable by every user through /proc).
builder imports this module too: one wrapper for the whole project.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
        _kill_group(proc)
        out, err = proc.communicate()
        raise
    return proc.returncode, out, err


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return


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
) -> Result:
    """Run `argv` and return its redacted result.

    Raises ProcessExecutionError when the command cannot start, times out, or (with `check`) exits with
    a code not in `ok_codes`. Raises ValueError when a secret appears in argv.
    """
    argv = [os.fspath(a) for a in argv]
    secret_list = [s for s in secrets if s]
    for arg in argv:
        if any(s in arg for s in secret_list if len(s) >= 3):
            raise ValueError(f"refusing to pass a secret on the command line of {argv[0]}")
    description = description or f"running {argv[0]}"
    shown = [redact(a, secret_list) for a in argv]
    stdin_data = input.encode() if isinstance(input, str) else input
    LOG.debug("exec %s (timeout %ss)", shown, timeout)
    try:
        code, out_b, err_b = _spawn(argv, stdin_data=stdin_data, env=env, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ProcessExecutionError(description, shown, reason=f"timed out after {timeout:g}s") from exc
    except (FileNotFoundError, PermissionError) as exc:
        reason = f"not found or not executable: {argv[0]}"
        raise ProcessExecutionError(description, shown, reason=reason) from exc
    out = redact(out_b.decode("utf-8", "replace"), secret_list)
    err = redact(err_b.decode("utf-8", "replace"), secret_list)
    if check and code not in set(ok_codes):
        raise ProcessExecutionError(description, shown, code, out, err)
    return Result(tuple(shown), code, out, err)
