"""firstboot on hostile ground: planted symlinks and hard links as state files, umask 000, metadata sources
that are devices, FIFOs, directories or huge files. Each is refused with one line or made safe."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures.guestinfo import DictSource, onboarding_config, write_metadata

from firstboot import fsutil, metadata, secretstore, sources
from firstboot.contract import KEY_SECRETS, State, Status
from firstboot.engine import Engine, build_context
from firstboot.state import StateStore
from firstboot.steps import load

VICTIM_TEXT = "root:x:0:0:precious\n"


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text(VICTIM_TEXT)
    return victim


def _plant_symlink(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _plant_hardlink(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(target, path)


# (state file under /var/lib/arcbake, how it is planted)
LOCK_TABLE = [
    pytest.param(
        _plant_symlink,
        "is a symlink",
        id="run.lock-symlink",
        marks=pytest.mark.fault(
            "run.lock planted as a symlink to another file",
            "refused with one line; the target is neither followed nor truncated",
        ),
    ),
    pytest.param(
        _plant_hardlink,
        "hard links",
        id="run.lock-hardlink",
        marks=pytest.mark.fault(
            "run.lock planted as a hard link to another file",
            "refused with one line; the other name's content kept",
        ),
    ),
]


@pytest.mark.parametrize(("plant", "fragment"), LOCK_TABLE)
def test_run_lock_is_never_followed_or_truncated(
    tmp_path: Path, plant: Callable[[Path, Path], None], fragment: str
) -> None:
    root = tmp_path / "root"
    victim = _victim(tmp_path)
    store = StateStore(root)
    plant(store.lock_path, victim)
    ctx = build_context(root, DictSource(), env={}, time_scale=0.01)
    ctx.instance_id = "vm-1"
    result = Engine(ctx, []).run()
    assert not result.ok
    assert fragment in result.status.message and "\n" not in result.status.message
    assert victim.read_text() == VICTIM_TEXT


def test_run_lock_is_a_0600_regular_file_and_reusable(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.lock_path.parent.mkdir(parents=True)
    store.lock_path.write_text("stale 1 2\n" * 50)  # a leftover from a crashed run: rewritten, not refused
    with umask(0):
        store.acquire()
    try:
        assert store.lock_path.read_text().split()[0] == str(os.getpid())
        assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    finally:
        store.release()


def _status_json(path: Path) -> None:
    path.write_text(Status(state=State.DONE, message="planted").to_json())


# (state file, reader, what the reader must return for a planted symlink)
STATE_READ_TABLE = [
    pytest.param("status.json", lambda s, r: s.read_status(), None, id="status.json"),
    pytest.param("done", lambda s, r: s.done_instance(), None, id="done"),
    pytest.param("config.json", lambda s, r: metadata.cached_config(r), None, id="config.json"),
]


@pytest.mark.fault(
    "state files (status.json, done, config.json) planted as symlinks",
    "not followed: read as absent, never the target's content",
)
@pytest.mark.parametrize(("name", "read", "expected"), STATE_READ_TABLE)
def test_state_files_are_read_without_following_symlinks(
    tmp_path: Path, name: str, read: Callable[[StateStore, Path], object], expected: object
) -> None:
    root = tmp_path / "root"
    target = tmp_path / "planted"
    target.write_text(
        Status(state=State.DONE, message="planted").to_json()
        if name == "status.json"
        else ("vm-1\n" if name == "done" else json.dumps(onboarding_config()))
    )
    store = StateStore(root)
    _plant_symlink(store.dir / name, target)
    assert read(store, root) == expected


def test_state_file_symlinked_to_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    _plant_symlink(store.status_path, Path("/dev/zero"))
    assert store.read_status() is None
    store.status_path.unlink()
    store.status_path.write_bytes(b" " * (fsutil.STATE_CAP + 1))
    assert store.read_status() is None  # over the cap: refused before it is read


def test_state_dir_planted_as_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    root = tmp_path / "root"
    _plant_symlink(root / "var/lib/arcbake", elsewhere)
    with pytest.raises(fsutil.UnsafePathError, match="symlink"):
        StateStore(root).write_status(Status(state=State.RUNNING))
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # not chmod-ed through the link
    assert list(elsewhere.iterdir()) == []


@pytest.mark.fault("umask 000 (common in CI containers) while firstboot runs", "0700/0755 dirs, 0600 files")
def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    root = tmp_path / "root"
    meta = write_metadata(
        tmp_path / "meta.json", onboarding_config(), secrets={"sp_secret": "umask-secret-3141"}
    )
    with umask(0):
        ctx = build_context(root, sources.FileSource(meta), env={}, time_scale=0.01)
        result = Engine(ctx, load(["metadata", "hostname"])).run()
    assert result.ok, result.status
    state = root / "var/lib/arcbake"
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o002, f"{path} is world-writable ({oct(mode)})"
        if path.is_dir() and path.is_relative_to(state):
            assert mode == 0o700, f"{path}: {oct(mode)}"
        elif path.is_file() and path.is_relative_to(state):
            # status.json and done are not secret (the dir is 0700 anyway); everything else is 0600.
            want = 0o644 if path.name in ("status.json", "done") else 0o600
            assert mode == want, f"{path}: {oct(mode)}"
    assert stat.S_IMODE((root / "etc/hostname").stat().st_mode) == 0o644
    for parent in (root / "var", root / "var/lib", root / "etc"):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o755


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "meta.fifo"
    os.mkfifo(path)
    return path


def _huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.json"
    with path.open("wb") as handle:
        handle.truncate(sources.MAX_SOURCE_FILE + 1)  # sparse: costs no disk
    return path


# (metadata source file, error fragment)
SOURCE_TABLE = [
    pytest.param(
        lambda t: Path("/dev/zero"),
        "not a regular file",
        id="dev-zero",
        marks=pytest.mark.fault(
            "metadata source file:/dev/zero (and FIFOs, directories)",
            "one-line error, exit 1, nothing read without bound",
        ),
    ),
    pytest.param(_fifo, "not a regular file", id="fifo"),
    pytest.param(lambda t: t, "not a regular file", id="directory"),
    pytest.param(
        _huge,
        "larger than the 8 MiB limit",
        id="over-cap",
        marks=pytest.mark.fault("metadata file over the size cap", "refused before it is read"),
    ),
    pytest.param(lambda t: t / "absent.json", "not found", id="missing"),
]


@pytest.mark.parametrize(("make", "fragment"), SOURCE_TABLE)
def test_metadata_source_file_is_capped_and_regular(
    tmp_path: Path, make: Callable[[Path], Path], fragment: str
) -> None:
    with pytest.raises(sources.SourceError, match=fragment) as info:
        sources.make_source(f"file:{make(tmp_path)}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(
            lambda t: Path("/dev/zero"),
            "not a regular file",
            id="dev-zero",
            marks=pytest.mark.fault(
                "firstboot run --source file:/dev/zero", "one ERROR line, exit 1, no traceback"
            ),
        ),
        pytest.param(_fifo, "not a regular file", id="fifo"),
    ],
)
def test_firstboot_run_on_a_device_source_is_one_line_and_exit_1(
    tmp_path: Path, make: Callable[[Path], Path], fragment: str
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "firstboot.cli",
            "run",
            "--root",
            str(tmp_path / "root"),
            "--source",
            f"file:{make(tmp_path)}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


@pytest.mark.fault(
    "the instance's secrets file planted as a symlink", "refused (metadata fails); the target is not used"
)
def test_secrets_file_planted_as_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "planted.json"
    planted = {"instance_id": "vm-1", "secrets": {"sp_secret": "attacker-chosen"}}
    target.write_text(json.dumps(planted))
    _plant_symlink(secretstore.path(tmp_path, "vm-1"), target)
    src = DictSource({KEY_SECRETS: json.dumps({"sp_secret": "the-real-one-123"})})
    with pytest.raises(metadata.MetadataError, match="symlink"):
        metadata.load_secrets(src, tmp_path, "vm-1", persist=True)
    assert json.loads(target.read_text()) == planted
    assert src.writes == []  # not kept, so not redacted either
