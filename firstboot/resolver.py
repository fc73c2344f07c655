"""The clone's own resolver, asked the way the C library would ask it, but confined to `--root`.

`<root>/etc/hosts` first, then the `nameserver` lines of `<root>/etc/resolv.conf` (whatever NetworkManager
wrote there: the VM's `network.dns` for a static address, DHCP's otherwise, or the dns step's fix) on port
53 or `ARCBAKE_DNS_PORT` (test seam: resolv.conf cannot carry a port). dnspython, not getaddrinfo: under
`--root` the host's resolver is not the clone's, and a test must be able to point the clone at loopback.

The dns step surveys with `query()`; the time step resolves NTP server names with `addresses()`, so both
see the resolver chronyd will use.
"""

from __future__ import annotations

import ipaddress
import os
import time
from dataclasses import dataclass

import dns.exception
import dns.resolver

from firstboot.step import Context

RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
DNS_PORT_ENV = "ARCBAKE_DNS_PORT"


@dataclass(frozen=True)
class Answer:
    """One query's outcome: `status` is ok, nxdomain, servfail, refused, timeout, noanswer or error."""

    name: str
    server: str
    status: str
    seconds: float
    detail: str = ""


def query(name: str, server: str, port: int, timeout: float) -> Answer:
    """Ask `server` for A (then AAAA) records of `name`; never raises. `detail` lists the addresses."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [server]
    res.port = port
    res.timeout = res.lifetime = timeout
    started = time.monotonic()

    def done(status: str, detail: str = "") -> Answer:
        return Answer(name, server, status, time.monotonic() - started, detail)

    try:
        for rdtype in ("A", "AAAA"):
            try:
                answer = res.resolve(name, rdtype, search=False)
                return done("ok", ", ".join(r.to_text() for r in answer))
            except dns.resolver.NoAnswer:
                continue
        return done("noanswer")
    except dns.resolver.NXDOMAIN:
        return done("nxdomain")
    except dns.resolver.LifetimeTimeout:
        return done("timeout")
    except dns.resolver.NoNameservers as exc:
        # dnspython reports SERVFAIL / REFUSED this way; keep the rcode for the message.
        text = str(exc)
        status = "servfail" if "SERVFAIL" in text else "refused" if "REFUSED" in text else "error"
        return done(status, text[-160:])
    except dns.exception.DNSException as exc:
        return done("error", f"{type(exc).__name__}: {exc}")


def _resolv_lines(ctx: Context) -> list[list[str]]:
    try:
        text = ctx.path(RESOLV_CONF).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.split() for line in text.splitlines()]


def system_nameservers(ctx: Context) -> list[str]:
    """`nameserver` entries of `<root>/etc/resolv.conf`."""
    return [parts[1] for parts in _resolv_lines(ctx) if len(parts) >= 2 and parts[0] == "nameserver"]


def search_domains(ctx: Context) -> list[str]:
    """The `search` (or `domain`) entries of `<root>/etc/resolv.conf`: the last such line wins, as in libc."""
    found: list[str] = []
    for parts in _resolv_lines(ctx):
        if parts and parts[0] in ("search", "domain"):
            found = parts[1:]
    return found


def system_port() -> int:
    """53, or `ARCBAKE_DNS_PORT` (test seam)."""
    raw = os.environ.get(DNS_PORT_ENV, "")
    return int(raw) if raw.isdigit() else 53


def is_address(name: str) -> bool:
    """An IP literal needs no resolver."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _hosts_entry(ctx: Context, name: str) -> list[str]:
    try:
        text = ctx.path(HOSTS).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and name.lower() in (p.lower() for p in parts[1:]):
            found.append(parts[0])
    return found


def addresses(ctx: Context, name: str, timeout: float) -> tuple[list[str], list[Answer]]:
    """(addresses of `name`, the failed answers): IP literal, then hosts, then each nameserver in turn."""
    if is_address(name):
        return [name], []
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        # RFC 6761: loopback whatever resolv.conf says (nss-myhostname on EL answers it without a query).
        return ["127.0.0.1"], []
    listed = _hosts_entry(ctx, name)
    if listed:
        return listed, []
    failed: list[Answer] = []
    for server in system_nameservers(ctx):
        answer = query(name, server, system_port(), timeout)
        if answer.status == "ok":
            return [a.strip() for a in answer.detail.split(",") if a.strip()], failed
        failed.append(answer)
    return [], failed
