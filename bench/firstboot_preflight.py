#!/usr/bin/env python3
"""Preflight (time, dns, connectivity over 12 Arc endpoints): healthy, and with a resolver that never answers.

Everything is real and on loopback: chronyd serving NTP, dnsmasq with the endpoint names, a TLS server whose
certificate names them and a CONNECT proxy in front of it (tests/fixtures). Printed side by side:

- healthy: wall time of the three preflight steps through the engine;
- dead resolver (system resolver and upstreams silent): seconds until the dns step reports the failure
  (all names asked of all servers at once, `dns.timeout_seconds` each);
- the baseline: the same names looked up one after another with dnspython's default timeouts (5 s
  lifetime per name), what a sequential preflight with default settings would wait before saying anything.

Usage: python bench/firstboot_preflight.py [--baseline-names N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import dns.exception  # noqa: E402
import dns.resolver  # noqa: E402
from fixtures.dnsserver import point_resolv_at_loopback, start_dnsmasq  # noqa: E402
from fixtures.guestinfo import DictSource, onboarding_config  # noqa: E402
from fixtures.httpproxy import ConnectProxy  # noqa: E402
from fixtures.ntp import SilentUdp, start_chronyd  # noqa: E402
from fixtures.tls import TlsServer, make_ca, make_cert  # noqa: E402

from firstboot import endpoints, steps  # noqa: E402
from firstboot.contract import OnboardingConfig  # noqa: E402
from firstboot.engine import Engine, build_context  # noqa: E402
from firstboot.step import StepFailure  # noqa: E402
from firstboot.steps import dns as dns_step  # noqa: E402

# The contract's default per-query timeout (firstboot.contract.DnsConfig), as in the field.
DNS_TIMEOUT = 2.0
# The Arc endpoints of a westeurope config (firstboot.endpoints), each tried on 443 here.
ENDPOINTS = [e.host for e in endpoints.endpoints(OnboardingConfig.model_validate(onboarding_config()), {})]


def sequential_default(names: list[str], server: str, port: int) -> float:
    """Seconds for one-after-another lookups with dnspython's default timeout and lifetime."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = [server], port
    started = time.monotonic()
    for name in names:
        with contextlib.suppress(dns.exception.DNSException):
            res.resolve(name, "A")
    return time.monotonic() - started


def main() -> int:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline-names", type=int, default=len(ENDPOINTS), help="names in the sequential baseline"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="arcbake-bench-"))
    ntp = start_chronyd(work / "ntp")
    dnsd = start_dnsmasq(work / "dns", dict.fromkeys(ENDPOINTS, "127.0.0.1"))
    ca = make_ca(work / "ca", "bench CA")
    tls = TlsServer(make_cert(ca, work / "leaf", ENDPOINTS))
    proxy = ConnectProxy(routes={f"{n}:443": ("127.0.0.1", tls.port) for n in ENDPOINTS})
    silent4 = SilentUdp()
    silent6 = SilentUdp(host="::1", bind_port=silent4.port)
    os.environ["SSL_CERT_FILE"] = str(ca.cert)
    os.environ["ARCBAKE_ENDPOINTS_OVERRIDE"] = ",".join(f"{n}:443" for n in ENDPOINTS)
    try:
        # Healthy: the three steps through the engine.
        root = point_resolv_at_loopback(work / "root")
        os.environ["ARCBAKE_DNS_PORT"] = str(dnsd.port)
        cfg = onboarding_config(
            ntp_port=ntp.port, dns_port=dnsd.port, upstreams=["127.0.0.1"], proxy={"https_proxy": proxy.url}
        )
        ctx = build_context(root, DictSource({"guestinfo.metadata": '{"instance-id": "bench"}'}), env={})
        ctx.config = OnboardingConfig.model_validate(cfg)
        started = time.monotonic()
        result = Engine(ctx, steps.load(["dns", "time", "connectivity"])).run()
        healthy = time.monotonic() - started
        if not result.ok:
            print(f"healthy preflight failed: {result.status.message}", file=sys.stderr)
            return 1

        # Dead resolver: system resolver on ::1 and upstream on 127.0.0.1, same port, neither answers.
        dead_root = work / "dead"
        (dead_root / "etc").mkdir(parents=True)
        (dead_root / "etc/resolv.conf").write_text("nameserver ::1\n")
        os.environ["ARCBAKE_DNS_PORT"] = str(silent4.port)
        dead_cfg = onboarding_config(ntp_port=ntp.port, dns_port=silent4.port, upstreams=["127.0.0.1"])
        dead_cfg["dns"]["timeout_seconds"] = DNS_TIMEOUT
        dead_ctx = build_context(dead_root, DictSource(), env={})
        dead_ctx.config = OnboardingConfig.model_validate(dead_cfg)
        started = time.monotonic()
        try:
            dns_step.run(dead_ctx)
            print("dead resolver: the dns step did not fail", file=sys.stderr)
            return 1
        except StepFailure as exc:
            reported = time.monotonic() - started
            message = exc.message
        baseline_names = ENDPOINTS[: max(1, args.baseline_names)]
        baseline = sequential_default(baseline_names, "127.0.0.1", silent4.port)
        if len(baseline_names) < len(ENDPOINTS):
            baseline = baseline / len(baseline_names) * len(ENDPOINTS)
    finally:
        for closer in (proxy.close, tls.close, dnsd.stop, ntp.stop, silent4.close, silent6.close):
            closer()

    figures = {
        "endpoints": len(ENDPOINTS),
        "healthy_preflight_seconds": round(healthy, 3),
        "dead_resolver_failure_reported_seconds": round(reported, 3),
        "sequential_default_timeout_seconds": round(baseline, 3),
        "speedup": round(baseline / reported, 1),
        "dead_resolver_message": message[:160],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    extrapolated = " (extrapolated)" if len(baseline_names) < len(ENDPOINTS) else ""
    rows = [
        ("healthy preflight (time + dns + connectivity)", healthy, ""),
        ("dead resolver: dns failure reported after", reported, "target < 5 s"),
        (f"dead resolver: sequential default-timeout lookups{extrapolated}", baseline, "what we avoid"),
    ]
    print(f"preflight over {len(ENDPOINTS)} Arc endpoints (loopback chronyd, dnsmasq, TLS, CONNECT proxy)")
    for label, value, note in rows:
        print(f"  {label:<66} {value:7.2f} s  {note}")
    print(f"  failure reported {baseline / reported:.1f}x sooner (dns.timeout_seconds {DNS_TIMEOUT:g})")
    print(f"  message: {message[:120]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
