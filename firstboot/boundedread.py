"""Reading an input file that someone else named: a regular file only, and never more than a cap.

Spec and fleet files, `--source file:PATH` and a fleet's `{file: PATH}` secret references all name files
the program then reads. `/dev/zero` or a FIFO would read without end, and `/proc/self/environ` (a
"regular" file of size 0 on procfs) would copy the reader's own environment, credentials included,
wherever the value goes. So: open without blocking (a FIFO opens at once and is refused), check what was
opened (not what the name pointed at a moment earlier), refuse anything that is not a regular file or
that lives on /proc, /sys or /dev, and read at most `limit` bytes plus one to tell "too large".

Standard library only: firstboot is installed into the image without builder's dependencies.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Pseudo file systems whose "regular files" are process state, not data.
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


class BoundedReadError(Exception):
    """The file cannot be read as a bounded regular file; the message is one line without the content."""


def on_pseudo_fs(path: str) -> bool:
    """True for a path on /proc, /sys or /dev (normalised: `/tmp/../dev/zero` is on /dev)."""
    real = os.path.normpath(path)
    return any(real == root or real.startswith(root + "/") for root in _PSEUDO_ROOTS)


def _where(fd: int, path: Path) -> str:
    # What the descriptor really is (a symlink resolved at open time, not by a second lookup).
    try:
        return str(Path(f"/proc/self/fd/{fd}").readlink())
    except OSError:
        return os.path.realpath(path)


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; BoundedReadError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise BoundedReadError(f"cannot read: {exc.strerror or exc}") from None
    try:
        return read_fd(fd, path, limit)
    finally:
        os.close(fd)


def read_fd(fd: int, path: Path, limit: int, *, single_link: bool = False) -> bytes:
    """The checks and the capped read of `read_bounded` on a descriptor the caller opened (and closes);
    `single_link` also refuses a file with other hard links (firstboot's state files)."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BoundedReadError("not a regular file (devices, FIFOs, sockets and directories are refused)")
        if single_link and info.st_nlink > 1:
            raise BoundedReadError(f"has {info.st_nlink} hard links; refused")
        real = _where(fd, path)
        if on_pseudo_fs(real):
            raise BoundedReadError(f"{real} is on a pseudo file system (/proc, /sys, /dev): refused")
        if info.st_size > limit:
            raise BoundedReadError(f"larger than the {_size(limit)} limit ({info.st_size} bytes)")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise BoundedReadError(f"larger than the {_size(limit)} limit")
        return b"".join(chunks)
    except OSError as exc:
        raise BoundedReadError(f"cannot read: {exc.strerror or exc}") from None


def _size(limit: int) -> str:
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"
