"""dns: what the clone must resolve does resolve, through its own resolver; repaired when only that fails.

Runs before `time` (NTP servers are often names: chronyd and the offset measurement need the resolver
this step repairs; plain DNS over port 53 does not need a correct clock, so nothing is lost by asking first).

The names: every Arc endpoint (`ARC_ENDPOINTS` + `REGIONAL_ENDPOINTS`, formatted with `arc.location`, from
Microsoft's "Azure Arc-enabled Kubernetes network requirements"; wildcards are represented by a regional
instance) and every `time.ntp_servers` entry that is a name. Every name is asked of every server at once
(a thread per query, `dns.timeout_seconds` each), so a dead resolver is reported within about that timeout
instead of after sequential default timeouts.

- "system resolver": the clone's own, `firstboot.resolver` (`<root>/etc/resolv.conf`, port 53 or
  `ARCBAKE_DNS_PORT`).
- upstreams: `dns.upstream_servers` on `dns.port`.

Precedence (README, "DNS: who decides the clone's resolver"): the template carries no DNS fix, so the
clone's resolver is what NetworkManager makes of its network: the VM's `network.dns` and `network.search`
for a static address (cloud-init renders them into the connection), DHCP's otherwise. It is kept whenever
it resolves the names. Only when it fails (or is slower than `SLOW_SECONDS`) while the upstreams answer,
and `dns.apply_fix` is true, is the fix written: a NetworkManager drop-in that stops NM rewriting
resolv.conf, and `/etc/resolv.conf` naming the upstreams with the search domains it had (plus `domain`).
`/etc/rancher/k3s/resolv.conf` is always written with the pod upstreams (K3s' `resolv-conf:` points there,
since a CoreDNS `forward` override is ignored). Then it checks again.

`ARCBAKE_ENDPOINTS_OVERRIDE` (comma list of `host[:port]`) replaces the Arc list (test seam, also used by
the connectivity step).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from dataclasses import dataclass

from firstboot.contract import OnboardingConfig
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

ARC_ENDPOINTS: tuple[str, ...] = (
    "management.azure.com",
    "login.microsoftonline.com",
    "login.windows.net",
    "mcr.microsoft.com",
    "gbl.his.arc.azure.com",
    "k8connecthelm.azureedge.net",
    "k8sconnectcsp.azureedge.net",
    "guestnotificationservice.azure.com",
    "sts.windows.net",
    "graph.microsoft.com",
)
REGIONAL_ENDPOINTS: tuple[str, ...] = (
    "{region}.dp.kubernetesconfiguration.azure.com",
    "{region}.login.microsoft.com",
    "{region}.data.mcr.microsoft.com",
    # Cluster connect (az connectedk8s proxy) reaches this one on 8084, not 443.
    "{region}.obo.arc.azure.com:8084",
)
ENDPOINTS_OVERRIDE_ENV = "ARCBAKE_ENDPOINTS_OVERRIDE"
K3S_RESOLV_CONF = "/etc/rancher/k3s/resolv.conf"
NM_DROPIN = "/etc/NetworkManager/conf.d/90-arcbake-dns.conf"
MARK = "# written by arcbake firstboot (dns step)"
SLOW_SECONDS = 1.5


@dataclass(frozen=True)
class Endpoint:
    """A name Arc needs and the port it is used on."""

    host: str
    port: int = 443


def endpoints(config: OnboardingConfig, environ: dict[str, str] | None = None) -> list[Endpoint]:
    """The endpoints to check: the override when set, else the Arc list for the config's region."""
    raw = (environ if environ is not None else os.environ).get(ENDPOINTS_OVERRIDE_ENV, "").strip()
    if raw:
        return [parse_endpoint(item) for item in filter(None, (part.strip() for part in raw.split(",")))]
    region = config.arc.location if config.arc is not None else None
    names = list(ARC_ENDPOINTS)
    if region:
        names += [pattern.format(region=region) for pattern in REGIONAL_ENDPOINTS]
    return [parse_endpoint(n) for n in names]


def parse_endpoint(item: str) -> Endpoint:
    """`host` or `host:port` (port 443 when absent)."""
    host, sep, port = item.rpartition(":")
    if sep and port.isdigit() and host and ":" not in host:
        return Endpoint(host, int(port))
    return Endpoint(item)


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


def required_names(ctx: Context) -> list[str]:
    """The names the clone must resolve: the Arc endpoints and the NTP servers given by name."""
    config = ctx.require_config()
    arc = {e.host for e in endpoints(config, dict(ctx.env) | dict(os.environ))}
    ntp = {s for s in config.time.ntp_servers if not is_address(s)}
    return sorted(arc | ntp)


def run(ctx: Context) -> None:
    """Survey; apply the fix when the upstreams answer but the system resolver does not; survey again."""
    config = ctx.require_config()
    names = required_names(ctx)
    try:
        write_k3s_resolv(ctx)
    except OSError as exc:
        raise PermanentFailure(f"cannot write {K3S_RESOLV_CONF}: {exc}", "check /etc/rancher") from None
    s = survey(ctx, names)
    if s.system_ok:
        ctx.progress(f"{len(names)} names resolve through {', '.join(s.system_servers)}")
        return
    fixed = False
    if s.upstream_ok and config.dns.apply_fix:
        written = write_fix(ctx)
        fixed = True
        LOG.warning("system resolver failing; DNS fix applied: %s", ", ".join(written))
        s = survey(ctx, names)
        if s.system_ok:
            ctx.progress(f"DNS fix applied; {len(names)} names resolve")
            return
    transient, message, remedy = diagnose(ctx, s, fixed)
    raise (TransientFailure if transient else PermanentFailure)(message, remedy)


def check(ctx: Context) -> CheckResult:
    """Read-only survey of the host resolver and the upstreams."""
    names = required_names(ctx)
    s = survey(ctx, names)
    if s.system_ok:
        return CheckResult(True, f"{len(names)} names resolve through {', '.join(s.system_servers)}")
    _, message, remedy = diagnose(ctx, s)
    return CheckResult(False, message, remedy)
