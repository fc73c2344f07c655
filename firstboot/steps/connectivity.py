"""connectivity: TCP + TLS handshakes to every Arc endpoint, certificates verified, through the proxy.

All endpoints are tried at once (a thread each, `CONNECT_TIMEOUT` per connection). Through an HTTP proxy
(`proxy.https_proxy`, else `proxy.http_proxy`, unless the host is in `no_proxy`) each connection is an HTTP
`CONNECT host:port` tunnel. Trust: the system store (OpenSSL honours `SSL_CERT_FILE` / `SSL_CERT_DIR`, the
test seam) plus the proxy CA the proxy step installed. A failed verification is explained: a certificate
issued by one and the same untrusted issuer for different Azure names (or any untrusted certificate seen
through the proxy) is a TLS-intercepting proxy whose CA is not installed.

Through a proxy nothing is resolved here: the proxy resolves the Azure names (a node behind a proxy often
cannot resolve public names at all). The endpoints are `firstboot.endpoints` (Microsoft's network
requirements): a required one that fails fails the step; one only a feature needs (cluster connect:
`<region>.obo.arc.azure.com:8084`, which a default Squid refuses to CONNECT to; Azure RBAC:
`graph.microsoft.com`) fails it only when `arc.features` enables that feature, and is a warning otherwise.
`ARCBAKE_ENDPOINTS_OVERRIDE=host:port,...` replaces the list in tests.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from urllib.parse import urlsplit

# Undocumented in typeshed, present in CPython 3.8+ and imported by requests.compat for the same purpose.
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

from firstboot import endpoints, proxyenv
from firstboot.contract import OnboardingConfig
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="connectivity",
    needs=("proxy",),
    timeout_seconds=180,
    retry=RetryPolicy(deadline_seconds=120, initial_wait=2, max_wait=20),
    summary="TLS handshakes with the Azure Arc endpoints",
)

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Probe:
    """One endpoint's outcome: kind is ok, refused, timeout, dns, proxy, untrusted, mismatch or error."""

    endpoint: endpoints.Endpoint
    kind: str
    detail: str = ""
    issuer: str = ""
    via_proxy: bool = False

    @property
    def label(self) -> str:
        """host:port."""
        return f"{self.endpoint.host}:{self.endpoint.port}"


def proxy_for(config: OnboardingConfig, host: str) -> tuple[str, int] | None:
    """(proxy host, port) to tunnel through for `host`, or None for a direct connection."""
    url = config.proxy.https_proxy or config.proxy.http_proxy
    if not url:
        return None
    # NO_PROXY as the clients this probe stands for read it (az and the Azure SDK: Python's
    # urllib.request.proxy_bypass_environment, which requests consults): an entry `example.com` also
    # covers `login.example.com`; the old own matcher sent such a host through the proxy.
    if proxy_bypass_environment(host, {"no": ",".join(proxyenv.no_proxy_list(config.proxy, config.k3s))}):
        return None
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def tls_context(ctx: Context) -> ssl.SSLContext:
    """Verification against the system store (SSL_CERT_FILE honoured) plus the installed proxy CA."""
    context = ssl.create_default_context()
    ca_guest = proxyenv.ca_path(ctx.require_config().proxy)
    ca = ctx.path(ca_guest) if ca_guest else None
    if ca is not None and ca.exists():
        context.load_verify_locations(cafile=str(ca))
    return context


def _tunnel(sock: socket.socket, host: str, port: int) -> None:
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 16384:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split()
    if len(parts) < 2 or parts[1] != "200":
        raise ConnectionError(f"proxy answered {status_line or 'nothing'!r} to CONNECT {host}:{port}")


def _issuer(host: str, port: int, via: tuple[str, int] | None) -> str:
    """The issuer of the certificate the server (or an intercepting proxy) presents, unverified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with _open(host, port, via) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ConnectionError):
        return ""
    if not der:
        return ""
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
        handle.write(ssl.DER_cert_to_PEM_cert(der))
        handle.flush()
        try:
            # The stdlib's own certificate decoder (used by its tests); no third-party X.509 parser needed.
            decoded = ssl._ssl._test_decode_cert(handle.name)  # type: ignore[attr-defined]
        except (ssl.SSLError, AttributeError):
            return ""
    return ", ".join("=".join(pair) for rdn in decoded.get("issuer", ()) for pair in rdn)


def _open(host: str, port: int, via: tuple[str, int] | None) -> socket.socket:
    target = via or (host, port)
    sock = socket.create_connection(target, timeout=CONNECT_TIMEOUT)
    if via is not None:
        try:
            _tunnel(sock, host, port)
        except BaseException:
            sock.close()
            raise
    return sock


def probe(ctx: Context, endpoint: endpoints.Endpoint) -> Probe:
    """Connect (through the proxy when set) and complete a verified TLS handshake; never raises."""
    config = ctx.require_config()
    via = proxy_for(config, endpoint.host)
    host, port = endpoint.host, endpoint.port
    tunnel = via is not None
    try:
        with _open(host, port, via) as raw, tls_context(ctx).wrap_socket(raw, server_hostname=host):
            return Probe(endpoint, "ok", via_proxy=tunnel)
    except ssl.SSLCertVerificationError as exc:
        kind = "mismatch" if "match" in (exc.verify_message or "") else "untrusted"
        return Probe(
            endpoint, kind, exc.verify_message or str(exc), _issuer(host, port, via), via_proxy=tunnel
        )
    except ConnectionRefusedError:
        return Probe(endpoint, "refused", "connection refused (port closed)", via_proxy=tunnel)
    except TimeoutError:
        return Probe(endpoint, "timeout", f"no answer within {CONNECT_TIMEOUT:g} s", via_proxy=tunnel)
    except socket.gaierror as exc:
        return Probe(endpoint, "dns", f"name does not resolve: {exc.strerror}", via_proxy=tunnel)
    except ConnectionError as exc:
        return Probe(endpoint, "proxy" if via else "error", str(exc), via_proxy=tunnel)
    except (ssl.SSLError, OSError) as exc:
        return Probe(endpoint, "error", f"{type(exc).__name__}: {exc}", via_proxy=tunnel)


def probe_all(ctx: Context) -> list[Probe]:
    """Every endpoint at once."""
    env = {**os.environ, **ctx.env}
    targets = endpoints.endpoints(ctx.require_config(), env)
    with cf.ThreadPoolExecutor(max_workers=min(32, max(1, len(targets)))) as pool:
        return list(pool.map(lambda e: probe(ctx, e), targets))


def optional_failures(ctx: Context, probes: list[Probe]) -> list[str]:
    """Warnings: endpoints only a feature the config does not enable needs, unreachable."""
    config = ctx.require_config()
    return [
        f"{p.label}: {p.kind} ({p.detail}); needed for {p.endpoint.feature} only "
        f"(arc.features.{p.endpoint.feature} is off)"
        for p in probes
        if p.kind != "ok" and not endpoints.required(config, p.endpoint)
    ]


def judge(ctx: Context, probes: list[Probe]) -> tuple[bool, str, str] | None:
    """None when every required endpoint is fine, else (transient, message, remedy)."""
    config = ctx.require_config()
    probes = [p for p in probes if endpoints.required(config, p.endpoint)]
    bad = [p for p in probes if p.kind != "ok"]
    if not bad:
        return None
    untrusted = [p for p in bad if p.kind == "untrusted"]
    issuers = {p.issuer for p in untrusted if p.issuer}
    intercept = untrusted and (
        any(p.via_proxy for p in untrusted)
        or (len(issuers) == 1 and len({p.endpoint.host for p in untrusted}) > 1)
    )
    if intercept:
        issuer = ", ".join(sorted(issuers)) or "an unknown issuer"
        names = ", ".join(p.label for p in untrusted)
        return (
            False,
            f"TLS-intercepting proxy: the certificates for {names} are issued by '{issuer}', which this "
            "clone does not trust",
            "put the proxy's CA certificate (PEM) in proxy.ca_bundle_pem of the fleet file (the proxy step "
            "installs it), or exempt the Azure Arc endpoints from TLS inspection on the proxy",
        )
    lines = [f"{p.label}: {p.kind} ({p.detail})" for p in bad]
    message = f"{len(bad)} of {len(probes)} Arc endpoints unreachable: " + "; ".join(lines)
    kinds = {p.kind for p in bad}
    if kinds <= {"untrusted", "mismatch"}:
        return (
            False,
            message,
            "the endpoint presents a certificate this clone cannot verify: check the CA trust store "
            "(update-ca-trust) and that nothing between the clone and Azure answers in its place",
        )
    via = config.proxy.https_proxy or config.proxy.http_proxy
    route = f"through the proxy {via}" if via else "directly (no proxy configured)"
    ports = sorted({p.endpoint.port for p in bad})
    squid = (
        " (a proxy refuses CONNECT to ports it does not list: Squid's SSL_ports has only 443)"
        if via and any(port != 443 for port in ports)
        else ""
    )
    return (
        True,
        message,
        f"open TCP port {', '.join(map(str, ports))} {route} to the Azure Arc endpoints (firewall, proxy "
        f"allow-list){squid}; see Azure Arc-enabled Kubernetes network requirements",
    )


def run(ctx: Context) -> None:
    """Fail with the endpoints that cannot be reached, and why."""
    probes = probe_all(ctx)
    verdict = judge(ctx, probes)
    if verdict is not None:
        transient, message, remedy = verdict
        raise (TransientFailure if transient else PermanentFailure)(message, remedy)
    warnings = optional_failures(ctx, probes)
    for line in warnings:
        LOG.warning("unreachable, not required by this config: %s", line)
    ctx.progress(_ok_message(probes, warnings))


def _ok_message(probes: list[Probe], warnings: list[str]) -> str:
    ok = sum(p.kind == "ok" for p in probes)
    tail = (
        f"; {len(warnings)} feature-only endpoint(s) unreachable: {'; '.join(warnings)}" if warnings else ""
    )
    return f"TLS handshakes ok with {ok} Arc endpoints{tail}"


def check(ctx: Context) -> CheckResult:
    """The same handshakes, read-only."""
    probes = probe_all(ctx)
    verdict = judge(ctx, probes)
    if verdict is not None:
        return CheckResult(False, verdict[1], verdict[2])
    return CheckResult(True, _ok_message(probes, optional_failures(ctx, probes)))
