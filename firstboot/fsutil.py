"""Files and directories firstboot writes and reads, safe on hostile ground.

- `guest_path(root, "/etc/hosts")`: the one place a guest path is mapped under `--root`.
- `atomic_write`: temp file in the same directory + rename, with an explicit mode. mkstemp creates with
  O_EXCL and rename replaces a symlink itself, so a planted symlink is never followed or truncated.
- `make_dirs` / `private_dir`: every directory created with an explicit mode, independent of the umask
  (`Path.mkdir(parents=True)` gives parents `0777 & ~umask`: world-writable under the umask 000 of common
  CI container executors). `private_dir` (state, secrets) also refuses a symlink in its place.
- `open_state` / `read_state`: a state file (run.lock, status.json, secrets) opened with O_NOFOLLOW, refused
  unless it is a regular file with one link, reads size-capped (the checks and the read are
  `firstboot.boundedread`'s, which also serves every input file a user names).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from firstboot.boundedread import BoundedReadError, read_fd

# firstboot's state directory in the guest (stamps, status.json, secrets, done): one name for every module.
STATE_DIR = "/var/lib/arcbake"
DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700
# State files are JSON of a few KiB; anything far bigger is not ours.
STATE_CAP = 1 << 20


class UnsafePathError(OSError):
    """A path is a symlink, a device, a FIFO or too big where a regular file or directory was expected."""


def guest_path(root: Path, absolute: str | Path) -> Path:
    """Map a guest path (`/etc/hosts`) under `root` (`--root DIR`): the one place paths are confined."""
    rel = str(absolute).lstrip("/")
    return root / rel if rel else root


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and its missing parents with exactly `mode` (umask ignored); existing ones untouched."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode)
        except FileExistsError:
            # Created concurrently (another thread or run): leave its mode to its creator.
            continue
        # mkdir's mode is masked by the umask; chmod is not.
        directory.chmod(mode)
    if not path.is_dir():
        raise UnsafePathError(f"{path}: not a directory")


def private_dir(path: Path) -> None:
    """`path` as a root-only (0700) directory: created if missing, refused when it is a symlink."""
    make_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        path.mkdir(PRIVATE_DIR_MODE)
    # Through a descriptor opened without following a symlink: the mode lands on this directory only.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(f"{path}: is a symlink or not a directory; refusing to use it") from None
        raise
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)
    finally:
        os.close(fd)


def atomic_write(path: Path, text: str | bytes, mode: int | None = None) -> None:
    """Write `path` via a temp file in its directory and rename, keeping the old mode unless `mode`.

    Missing parent directories are created 0755 whatever the umask; the file gets `mode` by fchmod (the
    umask does not apply), 0644 when it is new and no mode is given.
    """
    data = text.encode() if isinstance(text, str) else text
    make_dirs(path.parent)
    if mode is None:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            mode = 0o644
    import tempfile  # here: readers such as `firstboot status` never write (lean start-up)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_regular(fd: int, path: Path) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{path}: not a regular file")
    if info.st_nlink > 1:
        # A hard link planted in place of a state file would let us write through to its other name.
        raise UnsafePathError(f"{path}: has {info.st_nlink} hard links; refusing to use it")
    return info


def open_state(path: Path, *, create: bool = False, mode: int = 0o600) -> int:
    """A state file's descriptor (read-write), never through a symlink, never truncated on open.

    Raises UnsafePathError for a symlink (O_NOFOLLOW gives ELOOP), a non-regular file or a hard link;
    FileNotFoundError when it does not exist and not `create`.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise UnsafePathError(f"{path}: is a symlink; refusing to follow it") from None
        raise
    try:
        info = _check_regular(fd, path)
        # O_CREAT's mode is masked by the umask, and an existing file keeps its own: set it outright.
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state(path: Path, cap: int = STATE_CAP) -> bytes:
    """A state file's content: not through a symlink, a regular file with one link, at most `cap` bytes.

    FileNotFoundError when absent; UnsafePathError (an OSError) for anything refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: is a symlink; refusing to follow it") from None
        raise
    try:
        return read_fd(fd, path, cap, single_link=True)
    except BoundedReadError as exc:
        raise UnsafePathError(f"{path}: {exc}") from None
    finally:
        os.close(fd)
