"""dns: what the clone must resolve does resolve, through its own resolver; repaired when only that fails.

Runs before `time` (NTP servers are often names: chronyd and the offset measurement need the resolver
this step repairs; plain DNS over port 53 does not need a correct clock, so nothing is lost by asking first).

The names (`names_to_check`): the NTP servers, the proxy and the K3s server given by name, and, without a
proxy, the Arc endpoints the config needs (`firstboot.endpoints`: required ones, plus those of the
features `arc.features` enables). Behind a proxy the node need not resolve public names at all (the proxy
resolves them): they are asked too, and failing ones are only a warning. Every name is asked of every
server at once (a thread per query, `dns.timeout_seconds` each), so a dead resolver is reported within
about that timeout instead of after sequential default timeouts.

- "system resolver": the clone's own, `firstboot.resolver` (`<root>/etc/resolv.conf`, port 53 or
  `ARCBAKE_DNS_PORT`).
- upstreams: `dns.upstream_servers` on `dns.port`.

Precedence (README, "DNS: who decides the clone's resolver"): the template carries no DNS fix, so the
clone's resolver is what NetworkManager makes of its network: the VM's `network.dns` and `network.search`
for a static address (cloud-init renders them into the connection), DHCP's otherwise. It is kept whenever
it resolves the required names. Only when it fails them (or is slower than `SLOW_SECONDS`) while the
upstreams answer every one of them, and `dns.apply_fix` is true, is the fix written: a NetworkManager
drop-in that stops NM rewriting resolv.conf, and `/etc/resolv.conf` naming the upstreams with the search
domains it had (plus `domain`). A proxy name only the site's DNS knows is therefore never "fixed" away.
`/etc/rancher/k3s/resolv.conf` is always written with the pod upstreams (K3s' `resolv-conf:` points
there, since a CoreDNS `forward` override is ignored). Then it checks again.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from firstboot import endpoints
from firstboot.fsutil import atomic_write
from firstboot.resolver import (
    RESOLV_CONF,
    Answer,
    is_address,
    query,
    search_domains,
    system_nameservers,
    system_port,
)
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="dns",
    needs=("hostname",),
    timeout_seconds=180,
    retry=RetryPolicy(deadline_seconds=120, initial_wait=2, max_wait=20),
    summary="resolving the Azure Arc endpoints",
)

K3S_RESOLV_CONF = "/etc/rancher/k3s/resolv.conf"
NM_DROPIN = "/etc/NetworkManager/conf.d/90-arcbake-dns.conf"
MARK = "# written by arcbake firstboot (dns step)"
SLOW_SECONDS = 1.5


@dataclass(frozen=True)
class Survey:
    """Answers from the system resolver and the upstreams."""

    system_servers: list[str]
    upstream_servers: list[str]
    system: list[Answer]
    upstream: list[Answer]

    @staticmethod
    def _good(answers: list[Answer], servers: list[str]) -> bool:
        # Every name answered by at least one of the servers.
        names = {a.name for a in answers}
        return bool(servers) and all(any(a.status == "ok" for a in answers if a.name == n) for n in names)

    @property
    def system_ok(self) -> bool:
        """Every name resolves through the system resolver, and fast."""
        return self._good(self.system, self.system_servers) and not self.system_slow

    @property
    def system_slow(self) -> bool:
        """Some system answer took longer than SLOW_SECONDS."""
        return any(a.seconds > SLOW_SECONDS for a in self.system if a.status == "ok")

    @property
    def upstream_ok(self) -> bool:
        """Every name resolves through the configured upstreams."""
        return self._good(self.upstream, self.upstream_servers)

    @property
    def system_dead(self) -> bool:
        """The system resolver gave no DNS answer at all (every query timed out or failed to send)."""
        return bool(self.system) and all(a.status in ("timeout", "error") for a in self.system)

    def only(self, names: set[str]) -> Survey:
        """The same survey restricted to `names`."""
        return Survey(
            self.system_servers,
            self.upstream_servers,
            [a for a in self.system if a.name in names],
            [a for a in self.upstream if a.name in names],
        )


def survey(ctx: Context, names: list[str]) -> Survey:
    """All queries at once: every name against every system and upstream server."""
    dns_cfg = ctx.require_config().dns
    system = system_nameservers(ctx)
    upstream = [str(s) for s in dns_cfg.upstream_servers]
    jobs = [(n, s, system_port(), "system") for s in system for n in names]
    jobs += [(n, s, dns_cfg.port, "upstream") for s in upstream for n in names]
    timeout = dns_cfg.timeout_seconds
    results: dict[str, list[Answer]] = {"system": [], "upstream": []}
    if jobs:
        with cf.ThreadPoolExecutor(max_workers=min(64, len(jobs))) as pool:
            futures = [(kind, pool.submit(query, n, s, port, timeout)) for n, s, port, kind in jobs]
            for kind, future in futures:
                results[kind].append(future.result())
    return Survey(system, upstream, results["system"], results["upstream"])


def _failures(answers: list[Answer]) -> str:
    by_status: dict[str, list[str]] = {}
    for a in answers:
        if a.status != "ok":
            by_status.setdefault(a.status, []).append(f"{a.name}@{a.server}")
    return "; ".join(f"{status}: {', '.join(sorted(set(items))[:6])}" for status, items in by_status.items())


def write_fix(ctx: Context) -> list[str]:
    """Point the host at the upstreams (NM drop-in + resolv.conf); return the guest paths written."""
    config = ctx.require_config()
    upstream = [str(s) for s in config.dns.upstream_servers]
    # Keep the search domains the network gave (a static VM's network.search, DHCP's option 119).
    domains = list(dict.fromkeys([*search_domains(ctx), *([config.domain] if config.domain else [])]))
    search = f"search {' '.join(domains)}\n" if domains else ""
    files = {
        NM_DROPIN: f"{MARK}\n[main]\ndns=none\nrc-manager=unmanaged\n",
        RESOLV_CONF: MARK
        + "\n"
        + search
        + "".join(f"nameserver {s}\n" for s in upstream)
        + "options timeout:2\n",
    }
    for guest_path, content in files.items():
        atomic_write(ctx.path(guest_path), content, mode=0o644)
    return list(files)


def write_k3s_resolv(ctx: Context) -> None:
    """`/etc/rancher/k3s/resolv.conf`: the pods' upstreams (CoreDNS forwards there)."""
    config = ctx.require_config()
    content = MARK + "\n" + "".join(f"nameserver {s}\n" for s in config.dns.pod_upstream_servers)
    atomic_write(ctx.path(K3S_RESOLV_CONF), content, mode=0o644)


def _servers_tried(s: Survey, ctx: Context) -> str:
    port = ctx.require_config().dns.port
    system = ", ".join(f"{x}:{system_port()}" for x in s.system_servers) or "none in /etc/resolv.conf"
    upstream = ", ".join(f"{x}:{port}" for x in s.upstream_servers)
    return f"system resolver ({system}) and upstreams ({upstream})"


def diagnose(ctx: Context, s: Survey, fixed: bool = False) -> tuple[bool, str, str]:
    """(transient, message, remedy) for a survey whose system resolver is not ok."""
    tried = _servers_tried(s, ctx)
    everything = s.system + s.upstream
    if (
        everything
        and all(a.status == "nxdomain" for a in everything if a.status != "ok")
        and any(a.status == "nxdomain" for a in everything)
    ):
        names = sorted({a.name for a in everything if a.status == "nxdomain"})
        return (
            False,
            f"the DNS servers say these Azure names do not exist (NXDOMAIN): {', '.join(names)} "
            f"(asked {tried})",
            "a DNS filter or split-horizon zone hides them: allow the Arc endpoints in the DNS servers "
            "(see Azure Arc-enabled Kubernetes network requirements)",
        )
    if not s.upstream_ok and not any(a.status == "ok" for a in everything):
        return (
            True,
            f"nothing resolves: {_failures(everything)} (tried {tried})",
            "check that UDP/TCP port 53 to the DNS servers is open and that they answer; correct "
            "dns.upstream_servers in the fleet file when they are wrong",
        )
    if not s.upstream_ok:
        return (
            True,
            f"the system resolver fails ({_failures(s.system)}) and the upstreams fail too "
            f"({_failures(s.upstream)}); tried {tried}",
            "fix the DNS servers (they time out or return SERVFAIL) or set dns.upstream_servers to "
            "working ones",
        )
    problem = _failures(s.system) or f"answers slower than {SLOW_SECONDS:g} s"
    if fixed:
        return (
            True,
            f"the DNS fix was applied (resolv.conf points at {', '.join(s.upstream_servers)}) but the system "
            f"resolver still fails: {problem}",
            f"check {RESOLV_CONF} (something may rewrite it: NetworkManager, systemd-resolved, DHCP hooks) "
            "and that the upstreams answer this host",
        )
    return (
        False,
        f"the system resolver fails ({problem}) while the upstreams {', '.join(s.upstream_servers)} answer",
        "set dns.apply_fix: true in the fleet file (firstboot then points resolv.conf at the upstreams), "
        "or fix the resolver in /etc/resolv.conf / NetworkManager by hand",
    )


def _host(url: str | None) -> str | None:
    host = urlsplit(url).hostname if url else None
    return host if host and not is_address(host) else None


def names_to_check(ctx: Context) -> tuple[set[str], set[str]]:
    """(required, optional) names. Required: the NTP servers, the proxy and the K3s server given by name,
    and, without a proxy, the Arc endpoints the config needs (firstboot.endpoints). Behind a proxy the
    Arc names are the proxy's to resolve, so they are only asked (a warning when they fail)."""
    config = ctx.require_config()
    arc = {
        e.host
        for e in endpoints.endpoints(config, dict(ctx.env) | dict(os.environ))
        if endpoints.required(config, e)
    }
    local = {s for s in config.time.ntp_servers if not is_address(s)}
    local |= {h for h in (_host(config.proxy.http_proxy), _host(config.proxy.https_proxy)) if h}
    server = _host(config.k3s.server_url)
    if server:
        local.add(server)
    if config.proxy.enabled:
        return local, arc - local
    return arc | local, set()


def run(ctx: Context) -> None:
    """Survey; apply the fix when the upstreams answer but the system resolver does not; survey again."""
    config = ctx.require_config()
    required, optional = names_to_check(ctx)
    try:
        write_k3s_resolv(ctx)
    except OSError as exc:
        raise PermanentFailure(f"cannot write {K3S_RESOLV_CONF}: {exc}", "check /etc/rancher") from None
    s = survey(ctx, sorted(required | optional))
    required = _effective(s, required, optional)
    need = s.only(required)
    if not required or need.system_ok:
        _done(ctx, s, required, optional)
        return
    fixed = False
    if need.upstream_ok and config.dns.apply_fix:
        written = write_fix(ctx)
        fixed = True
        LOG.warning("system resolver failing; DNS fix applied: %s", ", ".join(written))
        s = survey(ctx, sorted(required | optional))
        need = s.only(required)
        if need.system_ok:
            _done(ctx, s, required, optional, "DNS fix applied; ")
            return
    transient, message, remedy = diagnose(ctx, need, fixed)
    raise (TransientFailure if transient else PermanentFailure)(message, remedy)


def _effective(s: Survey, required: set[str], optional: set[str]) -> set[str]:
    # Behind a proxy the public names are optional, unless the resolver answers nothing at all: a dead
    # resolver is a broken link even when the proxy resolves Azure's names (repaired when the upstreams
    # answer, named otherwise).
    return required | optional if optional and s.system_dead else required


def _done(ctx: Context, s: Survey, required: set[str], optional: set[str], prefix: str = "") -> None:
    servers = ", ".join(s.system_servers) or "the system resolver"
    ctx.progress(f"{prefix}{len(required)} names resolve through {servers}")
    resolved = {a.name for a in s.only(optional).system if a.status == "ok"}
    missing = sorted(optional - resolved)
    if missing:
        LOG.warning(
            "behind the proxy, these Arc names do not resolve here (the proxy resolves them): %s",
            ", ".join(missing),
        )


def check(ctx: Context) -> CheckResult:
    """Read-only survey of the host resolver and the upstreams."""
    required, optional = names_to_check(ctx)
    s = survey(ctx, sorted(required | optional))
    required = _effective(s, required, optional)
    need = s.only(required)
    if not required or need.system_ok:
        servers = ", ".join(s.system_servers) or "the system resolver"
        return CheckResult(True, f"{len(required)} names resolve through {servers}")
    _, message, remedy = diagnose(ctx, need)
    return CheckResult(False, message, remedy)
