"""firstboot.subp.stream: streamed, redacted lines; timeout; Ctrl-C forwarded to the child's group."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from firstboot import subp

CHILD = r"""
import signal, sys, time
def on_int(signum, frame):
    print("cleaning up", flush=True)
    time.sleep(0.3)
    print("cleaned", flush=True)
    sys.exit(3)
signal.signal(signal.SIGINT, on_int)
print("started token=" + "s3cr3t" + "-value", flush=True)
time.sleep(30)
"""


@pytest.mark.allow_subp(Path(sys.executable).name)
def test_lines_are_redacted_and_streamed() -> None:
    seen: list[str] = []
    result = subp.stream(
        [sys.executable, "-c", "print('a ' + 's3cr3t' + '-value b'); print('two')"],
        timeout=30,
        on_line=seen.append,
        secrets=["s3cr3t-value"],
    )
    assert seen == ["a *** b", "two"]
    assert result.exit_code == 0 and result.stdout == "a *** b\ntwo"


@pytest.mark.allow_subp(Path(sys.executable).name)
def test_failure_and_secret_in_argv() -> None:
    with pytest.raises(subp.ProcessExecutionError) as err:
        subp.stream(
            [sys.executable, "-c", "print('boom'); raise SystemExit(4)"], timeout=30, on_line=lambda _: None
        )
    assert err.value.exit_code == 4 and "boom" in str(err.value)
    with pytest.raises(ValueError, match="refusing to pass a secret"):
        subp.stream(
            [sys.executable, "-c", "pw-12345"], timeout=30, on_line=lambda _: None, secrets=["pw-12345"]
        )


@pytest.mark.allow_subp(Path(sys.executable).name)
def test_timeout_interrupts_the_child_then_raises() -> None:
    seen: list[str] = []
    with pytest.raises(subp.ProcessExecutionError) as err:
        subp.stream(
            [sys.executable, "-c", CHILD, ""], timeout=1.0, on_line=seen.append, secrets=["s3cr3t-value"]
        )
    assert err.value.timed_out
    assert seen == ["started token=***", "cleaning up", "cleaned"]


def test_not_allowed_without_marker() -> None:
    with pytest.raises(AssertionError, match="allow_subp"):
        subp.stream(["true"], timeout=5, on_line=lambda _: None)


@pytest.mark.allow_subp(Path(sys.executable).name)
def test_ctrl_c_is_forwarded_and_waited_for() -> None:
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line.startswith("started"):
            # What a terminal's Ctrl-C does to builder: SIGINT to this process (the child is in its own
            # session and gets nothing from the terminal).
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        subp.stream([sys.executable, "-c", CHILD, ""], timeout=60, on_line=on_line)
    assert seen[-2:] == ["cleaning up", "cleaned"], seen
