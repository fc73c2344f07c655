"""A Debian 12 systemd guest for the boot tests: cached debootstrap root, per-test overlay, nspawn.

The base root is built once per recipe with `debootstrap --variant=minbase --include=...` and cached under
`/var/cache/arcbake-test-guest/<recipe hash>/root` (outside the repo; `ARCBAKE_GUEST_CACHE` overrides).
It is built into a temp dir beside the cache and renamed into place under a file lock, so a concurrent
run waits and an aborted run leaves only a `.tmp-*` dir that the next build removes: never a half root.

Each test gets its own writable view: an overlayfs mount whose lower layers are read-only (the cached
base, plus any shared layer such as the installed arcbake venv) and whose upper dir is the test's own.
Mounting takes milliseconds, where a full copy of the 300 MB root takes seconds.

The guest boots with `systemd-nspawn --register=no --keep-unit -b` and shares the host's network
namespace (no `--private-network`), so it reaches the NTP, DNS and Kubernetes API doubles that the
fixtures start on loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

CACHE = Path(os.environ.get("ARCBAKE_GUEST_CACHE", "/var/cache/arcbake-test-guest"))
MIRROR = os.environ.get("ARCBAKE_GUEST_MIRROR", "http://deb.debian.org/debian")

# What the guest needs beyond minbase: systemd as init and dbus (systemctl talks to it), python3 with
# venv for the /opt/arcbake venv, iproute2 and procps for the steps' probes, ca-certificates for TLS,
# chrony for `chronyc` (firstboot's time step asks chronyd in the guest whether it is synchronised).
PACKAGES = (
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
    "ca-certificates",
    "chrony",
)

# Applied to the fresh root before it is cached (part of the recipe hash).
_POST_BUILD = r"""
set -eu
# journald keeps the journal on disk, so the host can read it with `journalctl -D`.
mkdir -p /var/log/journal
# No getty on the nspawn console: nothing must wait for a terminal.
systemctl mask console-getty.service getty@.service serial-getty@.service >/dev/null 2>&1 || true
# No timers or units that fetch from the network or run for minutes in a test boot.
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
  systemd-networkd-wait-online.service >/dev/null 2>&1 || true
apt-get clean
rm -rf /var/lib/apt/lists/*
# Each test guest gets its own machine id; the cached root has none (like a sealed template).
: > /etc/machine-id
"""

RECIPE = {
    "version": 2,
    "suite": "bookworm",
    "variant": "minbase",
    "mirror": MIRROR,
    "packages": sorted(PACKAGES),
    "post_build": _POST_BUILD,
}

NSPAWN = ("systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--resolv-conf=off", "--timezone=off")


def recipe_hash() -> str:
    """A short hash of everything that decides the base root's content."""
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]


class GuestError(Exception):
    """The guest could not be built, mounted or booted; the message says which command failed."""


def _run(
    argv: Sequence[str], *, timeout: float, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if proc.returncode != 0:
        raise GuestError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}"
        )
    return proc


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class BaseRoot:
    """The cached base root and how it came to be."""

    root: Path
    built: bool  # True when this call built it (cold), False when the cache had it (warm)
    seconds: float


def ensure_base(cache: Path = CACHE) -> BaseRoot:
    """The cached base root for the current recipe, building it when missing."""
    started = time.monotonic()
    final = cache / recipe_hash()
    if (final / "root").is_dir():
        return BaseRoot(final / "root", False, time.monotonic() - started)
    with locked(cache / f"{recipe_hash()}.lock"):
        if (final / "root").is_dir():  # a concurrent run built it while we waited
            return BaseRoot(final / "root", False, time.monotonic() - started)
        # Holding the lock, any temp dir of this recipe is a leftover of an aborted build.
        for stale in cache.glob(f".tmp-{recipe_hash()}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".tmp-{recipe_hash()}-"))
        root = tmp / "root"
        LOG.info("building the test guest root %s (debootstrap, about 2 minutes)", final)
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                "bookworm",
                str(root),
                MIRROR,
            ],
            timeout=1200,
        )
        _run(["chroot", str(root), "/bin/sh", "-c", _POST_BUILD], timeout=120)
        (tmp / "recipe.json").write_text(json.dumps(RECIPE, indent=2, sort_keys=True))
        tmp.chmod(0o755)
        tmp.rename(final)
    return BaseRoot(final / "root", True, time.monotonic() - started)


@dataclass
class Boot:
    """The outcome of one boot."""

    returncode: int
    console: str
    seconds: float
    killed: bool


class Guest:
    """A writable overlay of read-only layers, mounted at `root`; `close()` unmounts it.

    `layers` are the lower dirs, topmost first (e.g. `[arcbake_layer, base]`).
    """

    def __init__(self, layers: Sequence[Path], workdir: Path) -> None:
        self.workdir = workdir
        self.upper = workdir / "upper"
        self.root = workdir / "root"
        for d in (self.upper, workdir / "work", self.root):
            d.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in layers)
        options = f"lowerdir={lower},upperdir={self.upper},workdir={workdir / 'work'}"
        _run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], timeout=30)
        self._mounted = True

    def close(self) -> None:
        """Unmount the overlay (the upper dir stays for inspection until tmp_path is cleaned)."""
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False, timeout=30)
            self._mounted = False

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, guest_path: str) -> Path:
        """The host path of `guest_path` inside the guest."""
        return self.root / guest_path.lstrip("/")

    def write(self, guest_path: str, text: str, mode: int = 0o644) -> Path:
        """Write a file into the guest (parents created)."""
        target = self.path(guest_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
        return target

    def run(
        self,
        *argv: str,
        timeout: float = 120,
        check: bool = True,
        env: dict[str, str] | None = None,
        binds: dict[Path, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one command in the guest (not booted) with `systemd-nspawn -D`.

        nspawn mounts a fresh tmpfs on the guest's /tmp: `binds={host_dir: "/tmp"}` shows a host dir
        there instead (how the provisioning scripts find the wheelhouse Packer would have uploaded).
        """
        setenv = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
        bind = [f"--bind={host}:{where}" for host, where in (binds or {}).items()]
        cmd = [*NSPAWN, *setenv, *bind, "-D", str(self.root), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            out = (proc.stdout[-2000:] + proc.stderr[-3000:]).strip()
            raise GuestError(f"in guest: {' '.join(argv)} exited {proc.returncode}:\n{out}")
        return proc

    def run_booted(self, script: str, *, staging: Path, timeout: float = 120) -> str:
        """Run `<staging>/<script>` in the BOOTED guest; return its output.

        For provisioning scripts that need a running systemd (`systemctl daemon-reload`), as on the VM
        Packer provisions: the guest boots straight into a oneshot unit (`systemd.unit=`) that runs the
        script, records its exit code and powers off. `staging` is bound at /mnt/arcbake-provision, not
        /tmp: systemd-tmpfiles empties /tmp at boot.
        """
        unit = "arcbake-test-provision.service"
        where = "/mnt/arcbake-provision"
        self.write(
            f"/etc/systemd/system/{unit}",
            "[Unit]\nDescription=run a provisioning script\n\n[Service]\nType=oneshot\n"
            f"ExecStart=/bin/bash -c 'cd {where} && bash {script} >{script}.log 2>&1; echo $? >{script}.rc'\n"
            "ExecStopPost=/bin/systemctl --no-block poweroff\n",
        )
        try:
            cmd = [*NSPAWN, f"--bind={staging}:{where}", "-D", str(self.root), "-b", f"systemd.unit={unit}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            self.path(f"/etc/systemd/system/{unit}").unlink()
        rc_file, log_file = staging / f"{script}.rc", staging / f"{script}.log"
        output = log_file.read_text() if log_file.exists() else ""
        if not rc_file.exists() or rc_file.read_text().strip() != "0":
            raise GuestError(f"{script} failed in the booted guest:\n{output[-3000:]}\n{proc.stdout[-2000:]}")
        return output

    @contextlib.contextmanager
    def running(self, unit: str = "basic.target", timeout: float = 60) -> Iterator[int]:
        """Boot into `unit` (no multi-user.target: arcbake-firstboot does not start) and keep the guest
        up; yields the host PID of its init (for `nsenter`, e.g. testinfra's nspawn backend).
        The guest is powered off on exit."""
        log = (self.workdir / "console-running.log").open("w")
        cmd = [*NSPAWN, "-D", str(self.root), "-b", f"systemd.unit={unit}", "systemd.show_status=false"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            init = None
            while init is None and time.monotonic() < deadline and proc.poll() is None:
                init = _container_init(proc.pid)
                time.sleep(0.05)
            if init is None:
                raise GuestError(f"the guest did not start (nspawn exit {proc.poll()})")
            wait = self.enter(init, "systemctl", "is-system-running", "--wait", timeout=timeout)
            # Right after start, systemd's socket may not exist yet, or the PID found is still nspawn's
            # child before it execs systemd ("offline": no manager yet): ask again until it answers.
            while (
                "Failed to connect" in wait.stderr or wait.stdout.strip() == "offline"
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
                wait = self.enter(init, "systemctl", "is-system-running", "--wait", timeout=timeout)
            if wait.stdout.strip() not in ("running", "degraded"):
                raise GuestError(f"the guest did not finish booting: {wait.stdout.strip()} {wait.stderr}")
            yield init
            self.enter(init, "systemctl", "--no-block", "poweroff", timeout=30)
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                self._power_cut(proc)
            log.close()

    @staticmethod
    def enter(init: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the running guest whose init has host PID `init`."""
        cmd = ["nsenter", f"--target={init}", "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd"]
        return subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=timeout, check=False)

    def boot(self, *, timeout: float = 90, kill_when: Callable[[], bool] | None = None) -> Boot:
        """Boot the guest until it powers itself off; SIGKILL its init when `kill_when()` turns true.

        A kill is a power cut: the container's PID 1 gets SIGKILL, which ends every process of the guest at
        once (the kernel kills a PID namespace with its init), and nspawn then exits by itself.
        On `timeout` the guest is killed the same way and GuestError is raised.
        """
        started = time.monotonic()
        log = (self.workdir / "console.log").open("w+")
        # Console status lines off: the journal (read from the host) has everything, the console stays short.
        cmd = [*NSPAWN, "-D", str(self.root), "-b", "systemd.show_status=false"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        killed = False
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    self._power_cut(proc)
                    log.seek(0)
                    tail = log.read()[-4000:]
                    raise GuestError(f"guest did not power off within {timeout}s; console tail:\n{tail}")
                if kill_when is not None and not killed and kill_when():
                    self._power_cut(proc)
                    killed = True
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                self._power_cut(proc)
            log.seek(0)
            console = log.read()
            log.close()
        return Boot(proc.returncode, console, time.monotonic() - started, killed)

    @staticmethod
    def _power_cut(proc: subprocess.Popen[bytes]) -> None:
        init = _container_init(proc.pid)
        if init is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def journal(self, *args: str) -> str:
        """`journalctl -D ROOT/var/log/journal ARGS` read from the host."""
        cmd = ["journalctl", "--no-pager", "-D", str(self.path("/var/log/journal")), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode not in (0, 1):
            raise GuestError(f"journalctl exited {proc.returncode}: {proc.stderr}")
        return proc.stdout


def _container_init(nspawn_pid: int) -> int | None:
    """The host PID of the guest's PID 1: the child of nspawn whose innermost NSpid is 1."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() != str(nspawn_pid):
            continue
        nspid = fields.get("NSpid", "").split()
        if len(nspid) > 1 and nspid[-1] == "1":
            return int(entry.name)
    return None
