"""Run every validator found on a build dir, each with the real tool, in parallel.

| validator | tool | on |
| --- | --- | --- |
| kickstart | `ksvalidator -e -v RHEL8/RHEL9` | http/ks.cfg |
| packer | `packer validate -only=...` + `packer fmt -check` | packer/ |
| chrony | `chronyd -p -f` | rootfs/etc/chrony.conf |
| firewalld | `firewall-offline-cmd --system-config T --check-config` | rootfs/etc/firewalld/zones/*.xml |
| systemd | `systemd-analyze verify --root=T` | rootfs/etc/systemd/system/*.service, *.timer |
| shellcheck | `shellcheck -f gcc` | scripts/*.sh, rootfs/etc/profile.d/*.sh |
| cloud-init | `cloud-init schema --config-file` | rootfs/etc/cloud/cloud.cfg.d/*.cfg |

Each gives one `Outcome`: passed, failed (with the tool's own message), or skipped (tool not installed).
Every command goes through `firstboot.subp` with a timeout; nothing is written outside temp dirs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from builder import render_context
from builder.events import NULL, Recorder
from firstboot import subp

LOG = logging.getLogger(__name__)

BUILD_INFO = render_context.BUILD_INFO_NAME
DEFAULT_TIMEOUT = 120.0
# Packer needs *some* vCenter settings to validate a source; these are never used to connect.
_PACKER_DUMMY_ENV = {
    "PKR_VAR_vsphere_server": "vcenter.validate.invalid",
    "PKR_VAR_vsphere_user": "arcbake-validate-user",
    "PKR_VAR_vsphere_password": "arcbake-validate-password",
    "CHECKPOINT_DISABLE": "1",
}
# ExecStart of the firstboot unit: installed by 30-install-firstboot, absent on the validating machine.
_GUEST_EXECUTABLES = ("/opt/arcbake/bin/firstboot",)
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class Status(StrEnum):
    """Result of one validator."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Outcome:
    """One validator's verdict on the build dir."""

    name: str
    status: Status
    message: str = ""
    tool: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        out = asdict(self)
        out["status"] = self.status.value
        out["seconds"] = round(self.seconds, 3)
        return out


class _Failed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Missing(Exception):
    pass


def find_tool(name: str) -> str | None:
    """Absolute path of `name`: PATH, then the sbin dirs, then next to this Python (venv tools)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in (*_SBIN, str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise _Missing(name)
    return path


def _run(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> str:
    """Run a validator; return its output, or raise _Failed with the tool's own message."""
    try:
        result = subp.run(
            argv, timeout=timeout, env=env, cwd=cwd, check=False, description=Path(argv[0]).name
        )
    except subp.ProcessExecutionError as exc:
        raise _Failed(str(exc)) from None
    text = (result.stdout + "\n" + result.stderr).strip()
    if result.exit_code != 0:
        raise _Failed(text or f"exit code {result.exit_code}")
    return text


@dataclass(frozen=True)
class BuildInfo:
    """`DIR/arcbake-build.json`: what the validators and the Packer driver need to know about a build dir."""

    packer_only: str
    ks_version: str
    vm_name: str
    variant: str

    @classmethod
    def load(cls, build_dir: Path) -> BuildInfo:
        """Read it from a rendered build dir."""
        data = json.loads((build_dir / BUILD_INFO).read_text(encoding="utf-8"))
        return cls(
            packer_only=str(data["packer_only"]),
            ks_version=str(data["ks_version"]),
            vm_name=str(data["vm_name"]),
            variant=str(data["variant"]),
        )


def _rendered(build_dir: Path, folders: list[str], pattern: str, what: str) -> list[Path]:
    """The rendered files matching `pattern` in each of `folders` (sorted per folder); _Failed if none."""
    found: list[Path] = []
    for folder in folders:
        found += sorted((build_dir / folder).glob(pattern))
    if not found:
        raise _Failed(f"no {what} rendered")
    return found


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- the validators -----------------------------------------------------------------------------------


def check_kickstart(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """ksvalidator with the variant's grammar; -e also fails on deprecated commands."""
    tool = _tool("ksvalidator")
    ks = build_dir / "http" / "ks.cfg"
    _run([tool, "-e", "-v", info.ks_version, str(ks)], timeout=timeout)
    return f"{_rel(ks, build_dir)} ({info.ks_version})"


def _packer_version(tool: str, timeout: float) -> tuple[int, int, int] | None:
    return render_context.parse_packer_version(_run([tool, "version"], timeout=timeout))


def check_packer(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """`packer fmt -check` and `packer validate -only=<source>`, plugins file left out for Packer < 1.7."""
    tool = _tool("packer")
    version = _packer_version(tool, timeout)
    src = build_dir / "packer"
    env = {**os.environ, **_PACKER_DUMMY_ENV}
    for key in ("PKR_VAR_rhsm_org", "PKR_VAR_rhsm_activation_key"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix=".packer-validate-", dir=build_dir) as tmp:
        # A sibling of packer/ so ${path.root}/../http and ../scripts resolve the same way.
        work = Path(tmp) / "packer"
        shutil.copytree(src, work)
        for linked in ("http", "rootfs", "scripts", "wheelhouse", "tests"):
            if (build_dir / linked).exists():
                (Path(tmp) / linked).symlink_to(build_dir / linked)
        plugins = work / "plugins.pkr.hcl"
        if plugins.exists() and version is not None and version < (1, 7, 0):
            plugins.unlink()
        _run([tool, "fmt", "-check", "-diff", "."], timeout=timeout, env=env, cwd=work)
        argv = [tool, "validate", f"-only={info.packer_only}"]
        pkrvars = json.loads((work / "arcbake.auto.pkrvars.json").read_text(encoding="utf-8"))
        # A file: checksum would be downloaded by validate; the URL is checked at build time instead.
        if str(pkrvars.get("iso_checksum", "")).startswith("file:"):
            argv.append("-var=iso_checksum=none")
        _run([*argv, "."], timeout=timeout, env=env, cwd=work)
    shown = ".".join(str(v) for v in version) if version else "?"
    return f"packer/ ({info.packer_only}, Packer {shown})"


def check_chrony(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """chronyd -p parses the config and prints it; it exits non-zero on an invalid directive."""
    tool = _tool("chronyd")
    conf = build_dir / "rootfs" / "etc" / "chrony.conf"
    _run([tool, "-p", "-f", str(conf)], timeout=timeout)
    return _rel(conf, build_dir)


def check_firewalld(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """firewall-offline-cmd --check-config on a private config dir holding the rendered zones."""
    tool = _tool("firewall-offline-cmd")
    zones = _rendered(build_dir, ["rootfs/etc/firewalld/zones"], "*.xml", "zone files")
    with tempfile.TemporaryDirectory(prefix="arcbake-firewalld-") as tmp:
        root = Path(tmp)
        base = Path("/etc/firewalld/firewalld.conf")
        if base.is_file():
            shutil.copyfile(base, root / "firewalld.conf")
        (root / "zones").mkdir()
        for zone in zones:
            shutil.copyfile(zone, root / "zones" / zone.name)
            (root / "zones" / zone.name).chmod(0o644)  # not 0666 under umask 000
        out = _run([tool, f"--system-config={root}", "--check-config"], timeout=timeout)
        # firewalld falls back to its stock config (exit 0 in some versions) when a user file is broken.
        if "Failed to load user configuration" in out or "Configuration error" in out:
            raise _Failed(out)
    return ", ".join(_rel(z, build_dir) for z in zones)


def check_systemd(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """systemd-analyze verify in a private root holding the host's units, ours, and a stub ExecStart."""
    tool = _tool("systemd-analyze")
    units = _rendered(build_dir, ["rootfs/etc/systemd/system"], "*.service", "systemd units")
    units += sorted((build_dir / "rootfs/etc/systemd/system").glob("*.timer"))
    with tempfile.TemporaryDirectory(prefix="arcbake-systemd-") as tmp:
        root = Path(tmp)
        # Default dependencies (sysinit.target, ...) and ordering targets must resolve inside --root.
        host_units = Path("/usr/lib/systemd/system")
        if host_units.is_dir():
            shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
        (root / "etc/systemd/system").mkdir(parents=True)
        for unit in units:
            shutil.copyfile(unit, root / "etc/systemd/system" / unit.name)
            # systemd warns about a world-writable unit: copyfile under umask 000 would make one.
            (root / "etc/systemd/system" / unit.name).chmod(0o644)
        for exe in _GUEST_EXECUTABLES:
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            stub.chmod(0o755)
        problems = []
        for unit in units:
            try:
                out = _run(
                    [tool, "verify", f"--root={root}", f"/etc/systemd/system/{unit.name}"], timeout=timeout
                )
            except _Failed as exc:
                problems.append(exc.message)
                continue
            # Parse problems ("Unknown key", "Failed to parse ... ignoring") exit 0: they count too.
            ours = [line for line in out.splitlines() if unit.name in line]
            if ours:
                problems.append("\n".join(ours))
        if problems:
            raise _Failed("\n".join(problems).replace(str(root), ""))
    return ", ".join(_rel(u, build_dir) for u in units)


def check_shellcheck(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """shellcheck -f gcc on every provisioning script and shell fragment."""
    tool = _tool("shellcheck")
    scripts = _rendered(build_dir, ["scripts", "rootfs/etc/profile.d"], "*.sh", "scripts")
    try:
        _run([tool, "-f", "gcc", *[str(s) for s in scripts]], timeout=timeout, cwd=build_dir)
    except _Failed as exc:
        raise _Failed(exc.message.replace(f"{build_dir}/", "")) from None
    return f"{len(scripts)} scripts"


def check_cloud_init(build_dir: Path, info: BuildInfo, timeout: float) -> str:
    """cloud-init schema on every cloud-config file."""
    tool = _tool("cloud-init")
    configs = _rendered(build_dir, ["rootfs/etc/cloud/cloud.cfg.d"], "*.cfg", "cloud-config")
    problems = []
    for conf in configs:
        try:
            _run([tool, "schema", "--config-file", str(conf)], timeout=timeout)
        except _Failed as exc:
            problems.append(f"{_rel(conf, build_dir)}: {exc.message}")
    if problems:
        raise _Failed("\n".join(problems))
    return ", ".join(_rel(c, build_dir) for c in configs)


Check = Callable[[Path, BuildInfo, float], str]

VALIDATORS: dict[str, tuple[str, Check]] = {
    "kickstart": ("ksvalidator", check_kickstart),
    "packer": ("packer", check_packer),
    "chrony": ("chronyd", check_chrony),
    "firewalld": ("firewall-offline-cmd", check_firewalld),
    "systemd": ("systemd-analyze", check_systemd),
    "shellcheck": ("shellcheck", check_shellcheck),
    "cloud-init": ("cloud-init", check_cloud_init),
}


def _recorded(name: str, build_dir: Path, info: BuildInfo, timeout: float, recorder: Recorder) -> Outcome:
    with recorder.step("validator", label=f"validator {name}", announce=False, validator=name) as step:
        outcome = _one(name, build_dir, info, timeout)
        step.fields["status"] = outcome.status.value
        if outcome.status is Status.FAILED:
            step.fail(outcome.message.strip().splitlines()[-1] if outcome.message.strip() else "rejected")
    return outcome


def _one(name: str, build_dir: Path, info: BuildInfo, timeout: float) -> Outcome:
    tool, check = VALIDATORS[name]
    start = time.monotonic()
    try:
        detail = check(build_dir, info, timeout)
    except _Missing as exc:
        return Outcome(
            name, Status.SKIPPED, f"{exc.args[0]} is not installed", tool, time.monotonic() - start
        )
    except _Failed as exc:
        return Outcome(name, Status.FAILED, exc.message.strip(), tool, time.monotonic() - start)
    except OSError as exc:
        return Outcome(
            name, Status.FAILED, f"cannot prepare the check: {exc}", tool, time.monotonic() - start
        )
    return Outcome(name, Status.PASSED, detail, tool, time.monotonic() - start)


def unknown_names(names: Sequence[str]) -> list[str]:
    """The names that are not validators (for `--only`)."""
    return [n for n in names if n not in VALIDATORS]


def run_validators(
    build_dir: Path,
    *,
    only: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    workers: int = 4,
    recorder: Recorder = NULL,
) -> list[Outcome]:
    """Run the validators (all, or `only`) on a rendered build dir; outcomes in VALIDATORS order.

    Each validator is a step of `recorder` (events file, progress spinner); the caller checks `only`
    with `unknown_names` first (a name that is not a validator is a usage error, not an empty run).
    """
    build_dir = Path(build_dir).absolute()
    info = BuildInfo.load(build_dir)
    names = [n for n in VALIDATORS if only is None or n in only]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_recorded, name, build_dir, info, timeout, recorder) for name in names]
        return [f.result() for f in futures]
