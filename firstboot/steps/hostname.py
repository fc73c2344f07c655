"""hostname: the clone's name from metadata into /etc/hostname and /etc/hosts.

`/etc/hosts` gets one line marked `# arcbake` (replaced on every run, other lines kept) mapping 127.0.1.1 to
the FQDN and short name, so K3s and az see a resolvable node name before DNS is fixed. `hostnamectl
set-hostname` runs only when the root is `/` and hostnamectl exists (tests run under `--root`).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from firstboot import subp
from firstboot.contract import OnboardingConfig
from firstboot.fsutil import atomic_write
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

META = StepMeta(
    name="hostname",
    needs=("metadata",),
    timeout_seconds=60,
    retry=RetryPolicy(deadline_seconds=30, initial_wait=1, max_wait=5),
    summary="setting the host name",
)

HOSTS_MARK = "# arcbake"
HOSTS_ADDRESS = "127.0.1.1"


def names(config: OnboardingConfig) -> tuple[str, str]:
    """(fqdn, short name) of this clone."""
    fqdn = f"{config.hostname}.{config.domain}" if config.domain else config.hostname
    return fqdn, config.hostname


def hosts_line(config: OnboardingConfig) -> str:
    """The managed /etc/hosts line."""
    fqdn, short = names(config)
    aliases = f"{fqdn} {short}" if fqdn != short else short
    return f"{HOSTS_ADDRESS}\t{aliases}\t{HOSTS_MARK}"


def _hosts_text(current: str, line: str) -> str:
    kept = [entry for entry in current.splitlines() if not entry.rstrip().endswith(HOSTS_MARK)]
    if not kept:
        kept = ["127.0.0.1\tlocalhost localhost.localdomain", "::1\tlocalhost localhost.localdomain"]
    return "\n".join([*kept, line]) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentFailure(f"cannot read {path}: {exc}", f"check {path}") from None


def run(ctx: Context) -> None:
    """Write /etc/hostname and the /etc/hosts line; set the running host name on a real root."""
    config = ctx.require_config()
    fqdn, short = names(config)
    hostname_file, hosts_file = ctx.path("/etc/hostname"), ctx.path("/etc/hosts")
    try:
        atomic_write(hostname_file, short + "\n", mode=0o644)
        atomic_write(hosts_file, _hosts_text(_read(hosts_file), hosts_line(config)), mode=0o644)
    except OSError as exc:
        raise PermanentFailure(
            f"cannot write the host name files: {exc}", "check that /etc is writable"
        ) from None
    if ctx.root == Path("/") and shutil.which("hostnamectl"):
        try:
            subp.run(
                ["hostnamectl", "set-hostname", short], timeout=30, description="hostnamectl set-hostname"
            )
        except subp.ProcessExecutionError as exc:
            raise TransientFailure(
                f"hostnamectl could not set the host name {short}: {exc}",
                "check that systemd-hostnamed runs (`systemctl status systemd-hostnamed`)",
            ) from None
    ctx.progress(f"host name {short} ({fqdn})")


def check(ctx: Context) -> CheckResult:
    """Do /etc/hostname, /etc/hosts (and the running name on a real root) match the metadata?"""
    config = ctx.require_config()
    fqdn, short = names(config)
    problems = []
    if _read(ctx.path("/etc/hostname")).strip() != short:
        problems.append(f"/etc/hostname is not {short}")
    if hosts_line(config) not in _read(ctx.path("/etc/hosts")).splitlines():
        problems.append(f"/etc/hosts has no arcbake line for {fqdn}")
    if ctx.root == Path("/") and socket.gethostname() not in (short, fqdn):
        problems.append(f"the running host name is {socket.gethostname()}, not {short}")
    if problems:
        return CheckResult(False, "; ".join(problems), "run `firstboot run --only hostname`")
    return CheckResult(True, f"host name {short} ({fqdn})")
