#!/usr/bin/env python3
"""firstboot's own overhead on a full onboarding: `firstboot run` (the program) against the doubles.

The world is the one of the resume test: real chronyd, dnsmasq, TLS server and CONNECT proxy on loopback
for the preflight steps; the Kubernetes API double, dnsmasq as the cluster DNS, and the systemctl and az
doubles for k3s, arc and flux, with chosen latencies (default: k3s node Ready 3 s after start, CoreDNS 3 s,
Arc connect 4 s, Arc agents 1 s, Flux extension 2 s, Flux controllers 1 s, Flux create 2 s, compliance 1 s).

Printed: total wall time of the run (process start to exit), the sum of the simulated latencies on the
critical path, the overhead (wall - critical path) and the ratio, plus where the overhead goes: the
per-step times from the journal lines, the number of az invocations and what one invocation of the az
double costs by itself (a Python process; the real az is slower, but that is Azure's time, not ours).

Usage: python bench/firstboot_overhead.py [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from doubles.harness import doubles_path  # noqa: E402
from doubles.world import Latencies, World, onboarding_world  # noqa: E402
from fixtures.dnsserver import point_resolv_at_loopback  # noqa: E402
from fixtures.guestinfo import onboarding_config  # noqa: E402
from fixtures.preflight import loopback_preflight  # noqa: E402

from firstboot.contract import OnboardingConfig  # noqa: E402
from firstboot.endpoints import endpoints  # noqa: E402

DEFAULT = Latencies(
    kubeconfig=1.0,
    node=3.0,
    coredns=3.0,
    connect=4.0,
    arc_pods=1.0,
    extension=2.0,
    flux_pods=1.0,
    flux_create=2.0,
    compliance=1.0,
)
STEP_LINE = re.compile(r"step (\w+): ok \(([\d.]+) s\)")


@dataclass
class Preflight:
    """What `doubles.world.onboarding_world` needs of H3's preflight world."""

    config: dict[str, Any]
    env: dict[str, str]

    def prepare_root(self, root: Path) -> Path:
        return point_resolv_at_loopback(root)


def one_run(world: World) -> dict[str, Any]:
    """Run `firstboot run -v` to the end; wall time, start-up time, per-step times, az invocations."""
    started = time.monotonic()
    proc = subprocess.Popen(world.argv("-v"), env=world.env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    startup = None
    for line in proc.stderr:
        lines.append(line)
        if startup is None and "starting (instance" in line:
            startup = time.monotonic() - started
    code = proc.wait(timeout=600)
    wall = time.monotonic() - started
    text = "".join(lines)
    if code != 0:
        raise SystemExit(f"firstboot run failed ({code}):\n{text[-3000:]}")
    steps = {m[1]: float(m[2]) for m in STEP_LINE.finditer(text)}
    return {"wall": wall, "startup": startup or 0.0, "steps": steps, "az_calls": len(world.az_calls())}


def az_double_cost(env: dict[str, str], samples: int = 5) -> float:
    """Median seconds of one `az version` through the double (process start, imports, JSON out)."""
    times = []
    for _ in range(samples):
        started = time.monotonic()
        subprocess.run(["az", "version"], env=env, capture_output=True, check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> int:
    """Run the bench and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--repeat", type=int, default=2, help="full runs (fresh world each); best is reported"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="arcbake-bench-overhead-"))
    # Every endpoint the dns and connectivity steps check for this config: resolvable, and tunnelled by the
    # proxy to a TLS server whose certificate names them all.
    targets = endpoints(OnboardingConfig.model_validate(onboarding_config()), environ={})
    runs = []
    with loopback_preflight(work, targets) as servers:
        config = {**onboarding_config(), **servers.sections()}
        pre = Preflight(config, servers.env)
        for i in range(max(1, args.repeat)):
            with onboarding_world(pre, work / f"root{i}", work / f"world{i}", DEFAULT) as world:
                runs.append(one_run(world))
        cost = az_double_cost({"PATH": doubles_path(), "AZ_DOUBLE_STATE": str(work / "az-version.json")})

    best = min(runs, key=lambda r: r["wall"])
    critical = DEFAULT.critical_path()
    overhead = best["wall"] - critical
    az_share = best["az_calls"] * cost
    figures = {
        "latencies": asdict(DEFAULT),
        "critical_path_seconds": round(critical, 3),
        "wall_seconds": round(best["wall"], 3),
        "all_wall_seconds": [round(r["wall"], 3) for r in runs],
        "overhead_seconds": round(overhead, 3),
        "ratio": round(best["wall"] / critical, 3),
        "steps_seconds": best["steps"],
        "az_invocations": best["az_calls"],
        "az_double_seconds_each": round(cost, 3),
        "overhead_without_az_double_startup_seconds": round(overhead - az_share, 3),
        "process_startup_seconds": round(best["startup"], 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print("firstboot run against the doubles (preflight real on loopback; k3s/arc/flux simulated)")
    print(f"  simulated latencies on the critical path   {critical:7.2f} s  {asdict(DEFAULT)}")
    walls = figures["all_wall_seconds"]
    print(f"  total wall time (best of {len(runs)})              {best['wall']:7.2f} s  all: {walls}")
    print(
        f"  overhead                                   {overhead:7.2f} s  ratio {figures['ratio']:.3f}"
        "  (target < 1 s or < 1.05)"
    )
    print(
        f"  of which az double process starts          {az_share:7.2f} s  "
        f"({best['az_calls']} calls x {cost:.3f} s)"
    )
    print(f"  overhead without the az double's own cost  {overhead - az_share:7.2f} s")
    print(f"  of which Python start-up and imports       {best['startup']:7.2f} s  (to the first log line)")
    print("  per step: " + ", ".join(f"{k} {v:.2f}" for k, v in best["steps"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
