#!/usr/bin/env python3
"""firstboot's own overhead on a full onboarding, with 1 and with 100 Flux configurations, side by side.

`firstboot run` (the program) runs against the world of the resume test: real chronyd, dnsmasq, TLS server
and CONNECT proxy on loopback for the preflight steps; the Kubernetes API double, dnsmasq as the cluster
DNS, the ARM + Entra ID double (HTTPS; firstboot's Azure SDK talks to it) and the systemctl and az doubles,
with chosen latencies (default: k3s node Ready 3 s after start, CoreDNS 3 s, Arc connect 4 s, Arc agents
1 s, Flux extension 2 s, Flux controllers 1 s, each Flux configuration 2 s, compliance 1 s after it).

Printed per run: wall time (process start to exit), the simulated latencies on the critical path, the
overhead (wall - critical path) and the ratio; the number of `az` process starts and what they cost here
(the double's own start-up and work beyond its simulated latencies, which each call logs: AZ_DOUBLE_TIMES;
not the login and logout, which run beside K3s's start and the agents' wait) and in the field: each one on
the critical path charged with the real azure-cli's start-up cost (`--az-startup`, default the figure
measured once and recorded in bench/README.md); firstboot's own overhead (overhead without what the az
double cost); the Resource Manager requests the SDK made; and the ratio of the 100-configuration run to the
1-configuration run. Targets are checked and printed. The K3s doubles count their latencies from their
exec (tests/doubles/proc_clock.py), as real K3s starts when systemctl returns.

With `--baseline REV`, the firstboot of commit REV (git archive) runs beside this one, alternating, against
the same doubles: the best and median of each, and what the change saved, for the wall and for the two
segments that are firstboot's alone (process start to K3s's start; last status to process end).

Usage: python bench/firstboot_overhead.py [--repeat N] [--configs 1,100] [--az-startup S] [--baseline REV]
       [--json]
"""

from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # a bench leaves no __pycache__ in the tree

import argparse  # noqa: E402
import compileall  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _baseline import extract  # noqa: E402
from doubles import harness  # noqa: E402
from doubles.harness import flux_section  # noqa: E402
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
# `/usr/bin/time /tmp/azcli/bin/az account show`, azure-cli 2.91.0 from PyPI: median of 3 warm runs here
# (bench/README.md, "The real az").
REAL_AZ_STARTUP = 0.60
# az calls firstboot runs beside a wait, not on the critical path (firstboot/steps/arc.py): `az login` while
# K3s starts (arc's `begin`), `az logout` while the Arc agents start. Their cost adds to the wall only when
# they outlast that wait, so it is not subtracted (subtracting it would credit firstboot with time it never
# spent), and the field figure does not charge them the real az's start-up.
OFF_CRITICAL_PATH_AZ = ("login", "logout")
STEP_LINE = re.compile(r"step (\w+): ok \(([\d.]+) s\)")
# Log lines that mark the segments of a run charged wholly to firstboot (the doubles' latencies are not in
# them): process start to the first log line, to K3s's start (`systemctl enable --now k3s`, logged as it is
# spawned), and from the last status ("done: ...") to the process's end. Side by side, their medians are
# steadier than the wall's: the doubles' sleeps and the load on their threads are not in them.
MARKS = {
    "startup": "running: starting (instance",
    "to_k3s": "exec ['systemctl', 'enable', '--now', '--no-block', 'k3s.service']",
    "done": "INFO firstboot.engine: done: ",
}
SEGMENTS = ("wall", "to_k3s", "exit")
# The targets: overhead and ratio for the standard run (the fewest configurations; 100 have their
# own target, <= 3x the time of 1), az process starts for every count.
BASE_TARGETS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "own overhead < 0.5 s": lambda f: f["own_overhead_seconds"] < 0.5,
    "ratio < 1.03": lambda f: f["ratio"] < 1.03,
}
EVERY_COUNT_TARGETS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "az process starts <= 3": lambda f: f["az_starts"] <= 3,
}


@dataclass
class Preflight:
    """What `doubles.world.onboarding_world` needs of H3's preflight world."""

    config: dict[str, Any]
    env: dict[str, str]

    def prepare_root(self, root: Path) -> Path:
        return point_resolv_at_loopback(root)


def flux_with(count: int) -> dict[str, Any]:
    """The world's Flux section with `count` configurations (the first keeps the name its Git secret has)."""
    base = flux_section()["configurations"][0]
    names = ["cluster-config", *(f"config-{i:03d}" for i in range(1, count))]
    return {"configurations": [{**base, "name": name} for name in names]}


def installed_copy(work: Path, tree: Path = REPO, name: str = "site") -> Path:
    """firstboot (of `tree`) as the guest has it: a copy with its bytecode compiled, as pip does installing
    the wheel.

    Run from the tree with no bytecode (the bench writes none there), every start would compile firstboot
    again (~0.04 s here) and charge it to the program; the copy lives under `work` and goes with it.
    """
    site = work / name
    shutil.copytree(tree / "firstboot", site / "firstboot", ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(site, quiet=1)
    return site


def compiled_doubles(work: Path) -> None:
    """The worlds' PATH gets a compiled copy of the doubles: run from the tree with no bytecode, every az
    (and systemctl) double call would compile az_double.py (1,000 lines) again, and the az double's time
    on the critical path counts in the wall ratio."""
    copy = work / "doubles-site" / "doubles"
    shutil.copytree(harness.DOUBLES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(copy, quiet=1)
    harness.DOUBLES = copy


def one_run(world: World, site: Path) -> dict[str, Any]:
    """Run `firstboot run -v` to the end; wall time, start-up time, per-step times, az starts, ARM calls."""
    started = time.monotonic()
    path = os.pathsep.join(p for p in (str(site), world.env.get("PYTHONPATH", "")) if p)
    env = {**world.env, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        world.argv("-v"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = []
    marks: dict[str, float] = {}
    for line in proc.stderr:
        lines.append(line)
        for mark, text in MARKS.items():
            if mark not in marks and text in line:
                marks[mark] = time.monotonic() - started
    code = proc.wait(timeout=600)
    wall = time.monotonic() - started
    text = "".join(lines)
    calls = world.az_calls()
    if code != 0:
        raise SystemExit(f"firstboot run failed ({code}):\n{text[-3000:]}")
    return {
        "wall": wall,
        "startup": marks.get("startup", 0.0),
        "to_k3s": marks.get("to_k3s", 0.0),
        "exit": wall - marks.get("done", wall),
        "steps": {m[1]: float(m[2]) for m in STEP_LINE.finditer(text)},
        "az_starts": len(calls),
        "az_starts_on_path": sum(1 for a in calls if not (a and a[0] in OFF_CRITICAL_PATH_AZ)),
        "az_double_seconds": world.az_double_seconds(besides=OFF_CRITICAL_PATH_AZ),
        "arm_requests": len(world.arm.requests(arm_only=True)),
        "token_requests": sum(1 for r in world.arm.requests() if r.path.endswith("/token")),
    }


def figures(run: dict[str, Any], critical: float, real_az: float) -> dict[str, Any]:
    """What is printed for one configuration count."""
    overhead = run["wall"] - critical
    own = overhead - run["az_double_seconds"]
    field = own + run["az_starts_on_path"] * real_az
    return {
        "wall_seconds": round(run["wall"], 3),
        "overhead_seconds": round(overhead, 3),
        "ratio": round(run["wall"] / critical, 4),
        "own_ratio": round((critical + own) / critical, 4),
        "az_starts": run["az_starts"],
        "az_starts_on_path": run["az_starts_on_path"],
        "az_double_seconds": round(run["az_double_seconds"], 3),
        "own_overhead_seconds": round(own, 3),
        "field_overhead_seconds": round(field, 3),
        "field_ratio": round((critical + field) / critical, 4),
        "arm_requests": run["arm_requests"],
        "token_requests": run["token_requests"],
        "process_startup_seconds": round(run["startup"], 3),
        "to_k3s_seconds": round(run["to_k3s"], 3),
        "exit_seconds": round(run["exit"], 3),
        "steps_seconds": run["steps"],
    }


def side_by_side(
    runs: dict[tuple[str, int], list[dict[str, Any]]], rev: str, counts: list[int]
) -> dict[str, Any]:
    """Per count and segment (SEGMENTS): best and median of this code and of the baseline's, run
    alternately; the medians' difference (what the change between them saves, in one run's load)."""
    out: dict[str, Any] = {"baseline": rev}
    for c in counts:
        out[str(c)] = {}
        for seg in SEGMENTS:
            now = [r[seg] for r in runs[("now", c)]]
            base = [r[seg] for r in runs[(rev, c)]]
            out[str(c)][seg] = {
                "now_best": round(min(now), 3),
                "now_median": round(statistics.median(now), 3),
                "baseline_best": round(min(base), 3),
                "baseline_median": round(statistics.median(base), 3),
                "median_saved": round(statistics.median(base) - statistics.median(now), 3),
            }
    return out


def main() -> int:
    """Run the bench and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=2, help="full runs per count (fresh world); best")
    parser.add_argument("--configs", default="1,100", help="Flux configuration counts (default 1,100)")
    parser.add_argument("--az-startup", type=float, default=REAL_AZ_STARTUP, help="real az start-up, s")
    parser.add_argument(
        "--baseline",
        default="none",
        help="a commit whose firstboot runs beside this one, alternating (wall times compared); none",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(c) for c in args.configs.split(",") if c.strip()]

    # SIGTERM (a timeout, CI cancelling) unwinds like Ctrl-C, so the finally below removes the folders.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="arcbake-bench-overhead-"))
    best: dict[int, dict[str, Any]] = {}
    # Every run, by (code, count): "now", and the baseline's when one runs beside it.
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        # Every endpoint the dns and connectivity steps check for this config: resolvable, and tunnelled by
        # the proxy to a TLS server whose certificate names them all.
        targets = endpoints(OnboardingConfig.model_validate(onboarding_config()), environ={})
        sites = {"now": installed_copy(work)}
        tree = None if args.baseline == "none" else extract(args.baseline, work, ("firstboot",))
        if tree is not None:
            sites[args.baseline] = installed_copy(work, tree, "baseline-site")
        compiled_doubles(work)
        with loopback_preflight(work, targets) as servers:
            pre = Preflight({**onboarding_config(), **servers.sections()}, servers.env)
            for i in range(max(1, args.repeat)):
                # Interleaved: both counts, and the baseline (first every other round), see the same load.
                codes = list(sites) if i % 2 == 0 else list(reversed(sites))
                for count, (n, code) in ((count, nc) for count in counts for nc in enumerate(codes)):
                    where = work / f"run{i}-{count}-{n}"
                    with onboarding_world(
                        pre, where / "root", where / "world", DEFAULT, flux=flux_with(count)
                    ) as w:
                        run = one_run(w, sites[code])
                    runs.setdefault((code, count), []).append(run)
                    if code == "now" and (count not in best or run["wall"] < best[count]["wall"]):
                        best[count] = run
                    shutil.rmtree(where, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    critical = DEFAULT.critical_path()
    out = {str(c): figures(best[c], critical, args.az_startup) for c in counts}
    summary: dict[str, Any] = {
        "latencies": asdict(DEFAULT),
        "critical_path_seconds": round(critical, 3),
        "real_az_startup_seconds": args.az_startup,
        "runs": out,
    }
    if len(counts) > 1:
        summary["wall_ratio_most_vs_fewest"] = round(best[max(counts)]["wall"] / best[min(counts)]["wall"], 3)
    fewest = min(counts)
    checks = {f"{name} ({fewest} configs)": test(out[str(fewest)]) for name, test in BASE_TARGETS.items()}
    for c in counts:
        checks |= {f"{name} ({c} configs)": test(out[str(c)]) for name, test in EVERY_COUNT_TARGETS.items()}
    if len(counts) > 1:
        checks[f"{max(counts)} configs <= 3x the time of {min(counts)}"] = (
            summary["wall_ratio_most_vs_fewest"] <= 3
        )
    summary["targets"] = checks
    if len(sites) > 1:
        summary["side_by_side"] = side_by_side(runs, args.baseline, counts)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print(summary, counts)
    return 0


def _print(summary: dict[str, Any], counts: list[int]) -> None:
    runs = summary["runs"]
    critical = summary["critical_path_seconds"]
    print("firstboot run against the doubles (preflight real on loopback; k3s, ARM, az simulated)")
    print(f"  simulated latencies on the critical path  {critical:.2f} s  {summary['latencies']}")
    real_az = summary["real_az_startup_seconds"]
    print(f"  real az charged {real_az:.2f} s per process start on the critical path (bench/README.md)")
    header = "".join(f"{str(c) + ' config' + ('s' if c > 1 else ''):>14}" for c in counts)
    print(f"  {'':44}{header}")
    rows = [
        ("total wall time (best run), s", "wall_seconds", "{:.2f}"),
        ("overhead (wall - critical path), s", "overhead_seconds", "{:.2f}"),
        ("ratio wall / critical path", "ratio", "{:.3f}"),
        ("ratio without the az double's own time", "own_ratio", "{:.3f}"),
        ("az process starts", "az_starts", "{}"),
        ("  of them on the critical path", "az_starts_on_path", "{}"),
        ("az double's own time (start-up, work), s", "az_double_seconds", "{:.2f}"),
        ("firstboot's own overhead (no az double), s", "own_overhead_seconds", "{:.2f}"),
        ("field overhead (az on the path at real cost), s", "field_overhead_seconds", "{:.2f}"),
        ("field ratio", "field_ratio", "{:.3f}"),
        ("Resource Manager requests (SDK)", "arm_requests", "{}"),
        ("token requests", "token_requests", "{}"),
        ("Python start-up to first log line, s", "process_startup_seconds", "{:.2f}"),
        ("process start to K3s's start, s", "to_k3s_seconds", "{:.2f}"),
        ("last status to process end, s", "exit_seconds", "{:.3f}"),
    ]
    for label, key, fmt in rows:
        print(f"  {label:44}" + "".join(f"{fmt.format(runs[str(c)][key]):>14}" for c in counts))
    for c in counts:
        steps = runs[str(c)]["steps_seconds"]
        print(f"  per step ({c}): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    if "wall_ratio_most_vs_fewest" in summary:
        ratio = summary["wall_ratio_most_vs_fewest"]
        print(f"  wall time {max(counts)} vs {min(counts)} configurations: {ratio:.3f}x")
    for name, ok in summary["targets"].items():
        print(f"  target {name:52} {'met' if ok else 'MISSED'}")
    side = summary.get("side_by_side")
    if side:
        rev = side["baseline"]
        print(f"  side by side with {rev} (runs alternating), s: best / median")
        for c in counts:
            for seg in SEGMENTS:
                r = side[str(c)][seg]
                print(
                    f"    {c:>3} config(s), {seg:6}: now {r['now_best']:.3f} / {r['now_median']:.3f}, "
                    f"{rev} {r['baseline_best']:.3f} / {r['baseline_median']:.3f}; "
                    f"saved {r['median_saved']:+.3f}"
                )


if __name__ == "__main__":
    sys.exit(main())
