"""Fleet deploy scaling against the bundled vCenter simulator (`bash tools/dev.sh bench`).

Deploys 10 and 100 clones at concurrency 1 and 8, each run on a fresh simulator, side by side in one
run, and prints seconds per clone and the ratios: 100 vs 10 clones (about 1 means linear in fleet size)
and concurrency 8 vs 1 (the speed-up of the bounded thread pool).

The grid runs twice. First on the simulator as it is: its tasks finish in microseconds, so this measures
builder's own cost per clone, and on two cores nothing is left for threads to overlap. Then with the
simulator's method delays set to a vCenter-like task latency (`--task-latency`, by default 300 ms per
clone task and 100 ms per power-on, far below a real full clone): there each clone waits on vCenter, which
is the waiting the bounded pool exists to overlap.

Then `builder status` at 100 and 1,000 deployed VMs (`--status-sizes`), each fleet on a fresh simulator:
the bulk read builder does (the fleet's VMs in one PropertyCollector query) beside the per-VM read it
replaced (each VM's `config` and `runtime` fetched one by one), with their SOAP round trips counted at
pyVmomi's stub (`builder.vsphere.roundtrips`); then the whole `builder status FLEET --format json`
command in a fresh process (start-up, fleet file, login, read, logout): its wall and CPU seconds and all
its round trips, beside the same command of the code at `--baseline` (a commit before the whole-command
work, extracted with `git archive` into a temporary folder; `--baseline none` leaves it out).

    python bench/fleet_deploy.py [--sizes 10,100] [--concurrency 1,8] [--task-latency M=ms,...]
                                 [--status-sizes 100,1000] [--only deploy|status] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.dont_write_bytecode = True  # the bench leaves no __pycache__ in the tree

from _baseline import extract  # noqa: E402

from builder import status as st  # noqa: E402
from builder.deploy import deploy  # noqa: E402
from builder.fleet import Fleet, load_fleet  # noqa: E402
from builder.vsphere import inventory  # noqa: E402
from builder.vsphere.connection import Credentials, Session, connect  # noqa: E402
from builder.vsphere.roundtrips import counting  # noqa: E402

VCSIM = REPO / ".bin" / "vcsim"
# main before the whole-command work of `builder status` (9 round trips, SmartConnect, eager CLI imports,
# pure-Python YAML, pyVmomi's decoder): the "before" column.
BASELINE = "2032a25"
TREES = ("builder", "firstboot", "templates", "packer")  # what `builder` of the baseline needs
# `builder ARGS` under the round-trip counter, in a fresh process, for the tree on PYTHONPATH (both trees
# have `counting()`); the round trips go to stderr as the last line.
PROBE = """
import json, sys
from builder.vsphere.roundtrips import counting
from builder.cli import main
sys.argv = ["builder", *sys.argv[1:]]
code = 0
with counting() as seen:
    try:
        main()
    except SystemExit as exc:
        code = exc.code
sys.stderr.write("\\n" + json.dumps({"code": code, "trips": seen.total}) + "\\n")
"""
HEAD = """\
name: bench
template: DC0_H0_VM0
vsphere: {datacenter: DC0, cluster: DC0_C0, datastore: LocalDS_0, network: VM Network}
defaults:
  time: {ntp_servers: [ntp.example]}
  arc: {resource_group: rg, location: westeurope, subscription_id: 00000000-0000-4000-8000-000000000001,
        tenant_id: 00000000-0000-4000-8000-000000000002, client_id: 00000000-0000-4000-8000-000000000003}
  secrets: {sp_secret: {env: BENCH_SP}, k3s_token: {env: BENCH_TOKEN}}
vms:
  - {name: bench-001, network: {address: 10.0.0.1/16}}
"""


def fleet_text(size: int) -> str:
    """One server and size-1 agents."""
    agents = "".join(f"  - {{name: bench-{n:03d}, role: agent}}\n" for n in range(2, size + 1))
    return HEAD + agents


def start_sim(task_latency: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A fresh simulator on loopback (with `-method-delay task_latency` when given); its VSPHERE_* env."""
    password = secrets.token_hex(8)
    delay = ["-method-delay", task_latency] if task_latency else []
    proc = subprocess.Popen(
        [str(VCSIM), "-l", "127.0.0.1:0", "-username", "bench", *delay],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "VCSIM_PASSWORD": password},
    )
    url = ""
    for line in proc.stdout or []:
        url = line.strip() if line.startswith("https://") else url
        if line.strip() == "vcsim ready":
            break
    server = url.removeprefix("https://").removesuffix("/sdk")
    env = {
        "VSPHERE_SERVER": server,
        "VSPHERE_USER": "bench",
        "VSPHERE_PASSWORD": password,
        "VSPHERE_INSECURE": "1",
    }
    return proc, env


def measure(size: int, concurrency: int, workdir: Path, task_latency: str) -> tuple[float, int]:
    """Seconds for deploying `size` clones at `concurrency`; and the max clones in flight."""
    path = workdir / f"fleet-{size}.yaml"
    path.write_text(fleet_text(size))
    fleet = load_fleet(path)
    proc, env = start_sim(task_latency)
    try:
        with connect(Credentials.from_env(env)) as session:
            environ = {"BENCH_SP": "sp-" + secrets.token_hex(8), "BENCH_TOKEN": "tok-" + secrets.token_hex(8)}
            started = time.perf_counter()
            report = deploy(fleet, session, environ, concurrency=concurrency)
            seconds = time.perf_counter() - started
        if not report.ok or sum(r.action == "cloned" for r in report.results) != size:
            raise SystemExit(f"deploy of {size} clones failed: {report.as_dict()}")
        return seconds, report.max_in_flight
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def run_grid(sizes: list[int], levels: list[int], task_latency: str, workdir: Path) -> None:
    """Measure every (size, concurrency) pair on fresh simulators; print the table and the ratios."""
    results: dict[tuple[int, int], float] = {}
    print(f"{'clones':>6}  {'concurrency':>11}  {'seconds':>8}  {'s/clone':>8}  {'max in flight':>13}")
    for size in sizes:
        for level in levels:
            seconds, in_flight = measure(size, level, workdir, task_latency)
            results[(size, level)] = seconds
            print(
                f"{size:>6}  {level:>11}  {seconds:>8.2f}  {seconds / size:>8.4f}  {in_flight:>13}",
                flush=True,
            )
    small, large = min(sizes), max(sizes)
    low, high = min(levels), max(levels)
    for level in levels:
        per_small = results[(small, level)] / small
        per_large = results[(large, level)] / large
        print(
            f"s/clone {large} vs {small} clones at concurrency {level}: {per_large / per_small:.2f} "
            "(1.00 = linear in fleet size)"
        )
    for size in sizes:
        speedup = results[(size, low)] / results[(size, high)]
        print(f"speed-up of concurrency {high} over {low} for {size} clones: {speedup:.2f}x")


def per_vm_read(session: Session, fleet: Fleet) -> int:
    """The read `builder status` made before the bulk query: names, then each VM's config and runtime."""
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    found = inventory.vms_by_name(session, dc, [v.name for v in fleet.vms])
    rows = 0
    for fvm in fleet.vms:
        for vm in found.get(fvm.name, [])[-1:]:
            config, power = vm.config, vm.runtime.powerState
            rows += bool(config is not None and power)
    return rows


def median_of(runs: int, fn: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """Median seconds of `runs` calls of `fn` (seconds, round trips), with the round trips of the last."""
    results = [fn() for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[-1][1]


def measure_status(size: int, workdir: Path, runs: int, baseline: Path | None) -> dict[str, float]:
    """Deploy `size` clones on a fresh simulator, then time and count the status reads."""
    path = workdir / f"status-{size}.yaml"
    path.write_text(fleet_text(size))
    started = time.perf_counter()
    fleet = load_fleet(path)
    parse_s = time.perf_counter() - started
    proc, env = start_sim("")
    try:
        with connect(Credentials.from_env(env)) as session:
            environ = {"BENCH_SP": "sp-" + secrets.token_hex(8), "BENCH_TOKEN": "tok-" + secrets.token_hex(8)}
            report = deploy(fleet, session, environ, concurrency=8)
            if not report.ok:
                raise SystemExit(f"deploy of {size} clones failed")

            cpu: list[float] = []

            def bulk() -> tuple[float, int]:
                with counting() as trips:
                    started, cpu0 = time.perf_counter(), time.process_time()
                    rows = st.read_status(session, fleet)
                    seconds = time.perf_counter() - started
                    cpu.append(time.process_time() - cpu0)
                if len(rows) != size or any(r.state != st.NO_REPORT for r in rows):
                    raise SystemExit(f"status of {size} VMs read wrong rows")
                return seconds, trips.total

            def per_vm() -> tuple[float, int]:
                with counting() as trips:
                    started = time.perf_counter()
                    rows = per_vm_read(session, fleet)
                    seconds = time.perf_counter() - started
                if rows != size:
                    raise SystemExit(f"per-VM read of {size} VMs found {rows}")
                return seconds, trips.total

            bulk_s, bulk_trips = median_of(runs, bulk)
            per_vm_s, per_vm_trips = median_of(1 if size > 100 else runs, per_vm)

        environ_without_pyc = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

        def pyc(tree: Path) -> str:
            return str(workdir / f"pycache-{tree.name}")

        def command(tree: Path, cpu_s: list[float]) -> tuple[float, int]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", PROBE, "status", str(path), "--format", "json"],
                # Bytecode cached as an installed package has it, in the bench's temporary folder (none
                # in the tree); the warm-up run below writes it.
                env={**environ_without_pyc, **env, "PYTHONPATH": str(tree), "PYTHONPYCACHEPREFIX": pyc(tree)},
                cwd=tree,  # `python -c` puts the working directory first on sys.path
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            probe = json.loads(out.stderr.strip().splitlines()[-1])
            if probe["code"] != 0 or len(json.loads(out.stdout)["vms"]) != size:
                raise SystemExit(f"builder status ({tree}) failed: {out.stderr.strip()}")
            return seconds, int(probe["trips"])

        # Now and before alternate, run by run, so that both see the same load.
        trees = [REPO, *([baseline] if baseline else [])]
        cpu_by: dict[Path, list[float]] = {t: [] for t in trees}
        wall_by: dict[Path, list[float]] = {t: [] for t in trees}
        trips_by: dict[Path, int] = {}
        for tree in trees:
            command(tree, [])  # warm-up: bytecode
        for _ in range(runs):
            for tree in trees:
                seconds, trips_by[tree] = command(tree, cpu_by[tree])
                wall_by[tree].append(seconds)
        cli_s, cli_cpu, cli_trips = statistics.median(wall_by[REPO]), cpu_by[REPO], trips_by[REPO]
        base_s, base_cpu, base_trips = (
            (statistics.median(wall_by[baseline]), cpu_by[baseline], trips_by[baseline])
            if baseline
            else (0.0, [], 0)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {
        "parse_s": parse_s,
        "bulk_cpu_s": statistics.median(cpu),
        "bulk_s": bulk_s,
        "bulk_trips": bulk_trips,
        "per_vm_s": per_vm_s,
        "per_vm_trips": per_vm_trips,
        "cli_s": cli_s,
        "cli_cpu_s": statistics.median(cli_cpu),
        "cli_trips": cli_trips,
        "base_s": base_s,
        "base_cpu_s": statistics.median(base_cpu) if base_cpu else 0.0,
        "base_trips": base_trips,
    }


def run_status(sizes: list[int], workdir: Path, runs: int, baseline: Path | None) -> None:
    """`builder status` read at each fleet size, bulk beside per-VM; then the whole command beside the
    baseline's; the tables and the ratios."""
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall seconds stretch with it)")
    print(
        f"{'VMs':>5}  {'bulk s':>7}  {'CPU s':>6}  {'trips':>5}  "
        f"{'per-VM s':>8}  {'trips':>5}  {'per-VM/bulk':>11}  {'fleet parse s':>13}"
    )
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        r = results[size] = measure_status(size, workdir, runs, baseline)
        print(
            f"{size:>5}  {r['bulk_s']:>7.3f}  {r['bulk_cpu_s']:>6.3f}  {r['bulk_trips']:>5.0f}  "
            f"{r['per_vm_s']:>8.3f}  {r['per_vm_trips']:>5.0f}  {r['per_vm_s'] / r['bulk_s']:>10.1f}x  "
            f"{r['parse_s']:>13.3f}",
            flush=True,
        )
    small, large = min(sizes), max(sizes)
    if small != large:
        ratio = (results[large]["bulk_s"] / large) / (results[small]["bulk_s"] / small)
        print(f"bulk read s/VM {large} vs {small} VMs: {ratio:.2f} (1.00 = linear in fleet size)")
    print(
        "\nthe whole `builder status FLEET --format json` in a fresh process (start-up, fleet file, login, "
        f"read, logout), now and at {BASELINE if baseline else '(no baseline)'}:"
    )
    print(
        f"{'VMs':>5}  {'now s':>6}  {'CPU s':>6}  {'trips':>5}  "
        f"{'before s':>8}  {'CPU s':>6}  {'trips':>5}  {'before/now wall':>15}  {'CPU':>5}"
    )
    for size in sizes:
        r = results[size]
        wall = f"{r['base_s'] / r['cli_s']:.1f}x" if baseline else "-"
        cpu = f"{r['base_cpu_s'] / r['cli_cpu_s']:.1f}x" if baseline else "-"
        print(
            f"{size:>5}  {r['cli_s']:>6.3f}  {r['cli_cpu_s']:>6.3f}  {r['cli_trips']:>5.0f}  "
            f"{r['base_s']:>8.3f}  {r['base_cpu_s']:>6.3f}  {r['base_trips']:>5.0f}  {wall:>15}  {cpu:>5}"
        )


def main() -> int:
    """Run the deploy grid without and with task latency, then the status reads; print tables, ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--task-latency", default="CloneVM_Task=300,PowerOnVM_Task=100")
    parser.add_argument("--status-sizes", default="100,1000")
    parser.add_argument("--runs", type=int, default=3, help="status: median of this many runs")
    parser.add_argument("--only", choices=("deploy", "status"))
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help="status: the commit to run beside (default %(default)s; none: no)",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # deploy's notes about the simulator's template are not results
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    if not os.access(VCSIM, os.X_OK):
        sys.exit(f"{VCSIM} is missing: run `bash tools/dev.sh setup`")
    with tempfile.TemporaryDirectory(prefix="arcbake-bench-") as tmp:
        if args.only != "status":
            print("simulator as is (builder's own cost per clone):")
            run_grid(sizes, levels, "", Path(tmp))
            print(f"\nwith vCenter-like task latency ({args.task_latency} ms):")
            run_grid(sizes, levels, args.task_latency, Path(tmp))
        if args.only != "deploy":
            print("\nbuilder status: bulk read vs per-VM read (SOAP round trips counted at the stub):")
            baseline = None if args.baseline == "none" else extract(args.baseline, Path(tmp), TREES)
            run_status([int(s) for s in args.status_sizes.split(",")], Path(tmp), args.runs, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
