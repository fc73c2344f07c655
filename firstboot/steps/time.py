"""time: chrony sources from metadata, wait for synchronisation, then measure the offset with ntplib.

Azure sign-in fails when the clock is off, so this link is checked before anything talks to Azure. It runs
after `dns`: NTP servers are usually names, and a clone whose resolver forwards to a dead upstream cannot
reach any of them until the dns step has repaired the resolver (README, "DNS: who decides the clone's
resolver"). Repairing first serves chronyd itself, which resolves its sources through the same resolver;
resolving the names here through the upstreams and handing chrony addresses would leave chronyd's own
re-resolution (pools rotate their addresses) broken.

1. Sources: when `<root>/etc/chrony.conf` has `sourcedir /etc/chrony.d` (chrony 4), the servers go to
   `/etc/chrony.d/arcbake.sources`; otherwise (arcbake's own chrony.conf, chrony 3) the `server`/`pool`
   lines of chrony.conf are replaced by ours. A port other than 123 is written as `port N`.
2. On a real root (`/`) with chronyc: `chronyc reload sources` when the sources file changed, a restart
   of chronyd when chrony.conf did; then `chronyc waitsync` bounded by `time.sync_timeout_seconds`.
   `chronyc refresh` first makes chronyd resolve its source names again: it may have failed to while the
   resolver was still broken, and would otherwise retry only after a growing back-off.
3. ntplib asks every configured server (names resolved through the clone's resolver, `firstboot.resolver`)
   on `time.ntp_port`, in parallel: the step fails (transient, so
   retried until the step's deadline) when none answers, when the answering servers are unsynchronised
   (leap 3 or stratum 0), or when the best offset exceeds `time.max_offset_seconds`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import ntplib

from firstboot import resolver, subp
from firstboot.contract import TimeConfig
from firstboot.fsutil import atomic_write
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="time",
    needs=("dns",),
    timeout_seconds=300,
    retry=RetryPolicy(deadline_seconds=240, initial_wait=2, max_wait=20),
    summary="synchronising the clock (chrony) and measuring the offset",
)

CHRONY_CONF = "/etc/chrony.conf"
SOURCES_FILE = "/etc/chrony.d/arcbake.sources"
MARK = "# arcbake: NTP servers from guestinfo.arcbake.config"
NTP_TIMEOUT = 2.0
LEAP_UNSYNCHRONISED = 3


@dataclass(frozen=True)
class Sample:
    """One server's answer (or why there was none)."""

    server: str
    offset: float | None = None
    stratum: int | None = None
    leap: int | None = None
    error: str | None = None

    @property
    def synchronised(self) -> bool:
        """A server that knows the time: not leap 3 (alarm), stratum 1..15."""
        return self.error is None and self.leap != LEAP_UNSYNCHRONISED and 0 < (self.stratum or 0) < 16


def source_lines(cfg: TimeConfig) -> list[str]:
    """chrony `server` lines for the configured servers."""
    port = f" port {cfg.ntp_port}" if cfg.ntp_port != 123 else ""
    return [f"server {server} iburst{port}" for server in cfg.ntp_servers]


def _uses_sourcedir(conf: str) -> bool:
    # Only `sourcedir` reads *.sources (re-read by `chronyc reload sources`); `confdir` wants *.conf.
    return bool(re.search(r"^\s*sourcedir\s+.*?/etc/chrony\.d\b", conf, re.MULTILINE))


def planned_files(ctx: Context) -> dict[str, str]:
    """Guest path -> content of what the sources should be."""
    cfg = ctx.require_config().time
    conf_path = ctx.path(CHRONY_CONF)
    conf = conf_path.read_text(encoding="utf-8") if conf_path.exists() else ""
    lines = source_lines(cfg)
    if not conf or _uses_sourcedir(conf):
        return {SOURCES_FILE: "\n".join([MARK, *lines]) + "\n"}
    kept = [
        line
        for line in conf.splitlines()
        if not re.match(r"^\s*(server|pool|peer)\s", line) and line.strip() != MARK
    ]
    return {CHRONY_CONF: "\n".join([*kept, MARK, *lines]) + "\n"}


def write_sources(ctx: Context) -> list[str]:
    """Write the sources; the guest paths that changed."""
    changed = []
    for guest_path, content in planned_files(ctx).items():
        target = ctx.path(guest_path)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != content:
            atomic_write(target, content, mode=0o644)
            changed.append(guest_path)
    return changed


def measure(ctx: Context, cfg: TimeConfig, timeout: float = NTP_TIMEOUT) -> list[Sample]:
    """Ask every server at once (one thread each); one Sample per server, in config order."""

    def ask(server: str) -> Sample:
        found, failed = resolver.addresses(ctx, server, timeout)
        if not found:
            why = "; ".join(f"{a.server}: {a.status}" for a in failed) or "no nameserver in /etc/resolv.conf"
            return Sample(server, error=f"does not resolve through the clone's resolver ({why})")
        try:
            resp = ntplib.NTPClient().request(found[0], port=cfg.ntp_port, version=4, timeout=timeout)
        except ntplib.NTPException as exc:
            return Sample(server, error=f"no answer ({exc})")
        except OSError as exc:
            return Sample(server, error=f"{type(exc).__name__}: {exc}")
        return Sample(server, offset=float(resp.offset), stratum=int(resp.stratum), leap=int(resp.leap))

    with cf.ThreadPoolExecutor(max_workers=len(cfg.ntp_servers)) as pool:
        return list(pool.map(ask, cfg.ntp_servers))


def _servers(cfg: TimeConfig) -> str:
    return ", ".join(f"{s}:{cfg.ntp_port}" for s in cfg.ntp_servers)


def judge(cfg: TimeConfig, samples: list[Sample]) -> tuple[str, str] | None:
    """None when the clock is fine, else (message, remedy)."""
    answered = [s for s in samples if s.error is None]
    unresolved = [s for s in samples if s.error and s.error.startswith("does not resolve")]
    if not answered and unresolved:
        return (
            "NTP server names do not resolve: " + "; ".join(f"{s.server} {s.error}" for s in unresolved),
            "the dns step should have repaired the resolver: run `firstboot doctor` and check the dns "
            "line; or give time.ntp_servers as addresses in the fleet file",
        )
    if not answered:
        return (
            f"no NTP server answered: {_servers(cfg)} (UDP)",
            f"check that UDP port {cfg.ntp_port} to {', '.join(cfg.ntp_servers)} is open in every firewall "
            "and that the servers run NTP (`chronyc sources -v` on this clone); correct time.ntp_servers "
            "in the fleet file if they are wrong",
        )
    synced = [s for s in answered if s.synchronised]
    if not synced:
        detail = ", ".join(f"{s.server} (leap {s.leap}, stratum {s.stratum})" for s in answered)
        return (
            f"the NTP servers answer but are not synchronised themselves: {detail}",
            "the servers have no time source of their own: fix their upstream (or their `local stratum`), "
            "or point time.ntp_servers at synchronised servers",
        )
    best = min(synced, key=lambda s: abs(s.offset or 0.0))
    offset = best.offset or 0.0
    if abs(offset) > cfg.max_offset_seconds:
        return (
            f"the clock is off by {offset:+.3f} s against {best.server} "
            f"(limit {cfg.max_offset_seconds:g} s); Azure sign-in fails on skew",
            "let chrony step the clock (`chronyc makestep`; `makestep 1 3` in chrony.conf) and check that "
            f"chronyd runs and uses {', '.join(cfg.ntp_servers)} (`chronyc tracking`)",
        )
    return None


def _refresh() -> None:
    # chrony < 4.0 (early EL8) has no `refresh`; it then re-resolves on its own back-off, which
    # waitsync's bound covers, so the failure is logged and not fatal.
    try:
        subp.run(["chronyc", "refresh"], timeout=15, description="chronyc refresh (resolve the names again)")
    except subp.ProcessExecutionError as exc:
        LOG.warning("chronyc refresh failed (chronyd re-resolves names on its own later): %s", exc)


def _waitsync(ctx: Context, cfg: TimeConfig, changed: list[str]) -> None:
    if ctx.root != Path("/") or not shutil.which("chronyc"):
        return
    try:
        if CHRONY_CONF in changed:
            # Server lines in chrony.conf are read at start only.
            subp.run(["systemctl", "restart", "chronyd"], timeout=60, description="restarting chronyd")
        elif changed:
            subp.run(["chronyc", "reload", "sources"], timeout=15, description="chronyc reload sources")
        _refresh()
        tries = max(1, int(cfg.sync_timeout_seconds))
        subp.run(
            ["chronyc", "waitsync", str(tries), f"{cfg.max_offset_seconds:g}", "0", "1"],
            timeout=tries + 10,
            description="waiting for chrony to synchronise",
        )
    except subp.ProcessExecutionError as exc:
        raise TransientFailure(
            f"chrony did not synchronise within {cfg.sync_timeout_seconds} s to {_servers(cfg)}: {exc}",
            "check `chronyc sources -v` and `chronyc tracking`; make sure chronyd runs and UDP port "
            f"{cfg.ntp_port} to the servers is open",
        ) from None


def run(ctx: Context) -> None:
    """Write the sources, wait for chrony, measure the offset."""
    cfg = ctx.require_config().time
    try:
        changed = write_sources(ctx)
    except OSError as exc:
        raise PermanentFailure(
            f"cannot write the chrony sources: {exc}", "check that /etc is writable"
        ) from None
    _waitsync(ctx, cfg, changed)
    samples = measure(ctx, cfg)
    verdict = judge(cfg, samples)
    if verdict is not None:
        raise TransientFailure(*verdict)
    best = min((s for s in samples if s.synchronised), key=lambda s: abs(s.offset or 0.0))
    ctx.progress(f"clock offset {best.offset:+.3f} s against {best.server}")


def chrony_leap_status(ctx: Context) -> str | None:
    """`Leap status` of `chronyc -n tracking` on a real root (None under --root or without chronyc)."""
    if ctx.root != Path("/") or not shutil.which("chronyc"):
        return None
    try:
        out = subp.run(["chronyc", "-n", "tracking"], timeout=5, description="chronyc tracking").stdout
    except subp.ProcessExecutionError as exc:
        return f"unknown ({exc.reason or exc.exit_code})"
    for line in out.splitlines():
        if line.startswith("Leap status"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def check(ctx: Context) -> CheckResult:
    """Read-only: the offset measured now, then chrony's own sync state (real root only)."""
    cfg = ctx.require_config().time
    samples = measure(ctx, cfg)
    verdict = judge(cfg, samples)
    if verdict is not None:
        return CheckResult(False, *verdict)
    leap = chrony_leap_status(ctx)
    if leap is not None and leap != "Normal":
        return CheckResult(
            False,
            f"chronyd is not synchronised (leap status: {leap}) although the servers answer",
            "check `chronyc sources -v`: chronyd may not use the configured servers; "
            "`systemctl restart chronyd`",
        )
    best = min((s for s in samples if s.synchronised), key=lambda s: abs(s.offset or 0.0))
    return CheckResult(
        True, f"clock offset {best.offset:+.3f} s against {best.server} (stratum {best.stratum})"
    )
