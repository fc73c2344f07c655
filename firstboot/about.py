"""`--version` of both programs: the distribution version, the git commit it was built from, the Python.

The commit comes from `_build_commit.txt` beside this file when the wheel carries one (written at
packaging time), else from `git rev-parse HEAD` when running from a source checkout, else `unknown`.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path

from firstboot import subp

COMMIT_FILE = Path(__file__).with_name("_build_commit.txt")
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def version() -> str:
    """The installed arcbake version, or `unknown` (running from a tree that was never installed)."""
    try:
        return dist_version("arcbake")
    except PackageNotFoundError:
        return "unknown"


def commit() -> str:
    """The git commit of this build (short form kept at 40 hex characters), or `unknown`."""
    try:
        recorded = COMMIT_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    if recorded:
        return recorded
    if not (_SOURCE_ROOT / ".git").exists():
        return "unknown"
    try:
        head = subp.run(
            ["git", "rev-parse", "HEAD"], timeout=5, cwd=_SOURCE_ROOT, description="git rev-parse"
        ).stdout.strip()
    except subp.ProcessExecutionError:
        return "unknown"
    return head or "unknown"


def version_text(prog: str) -> str:
    """`PROG VERSION (commit C, Python X.Y.Z)`."""
    return f"{prog} {version()} (commit {commit()}, Python {platform.python_version()})"
