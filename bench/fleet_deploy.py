"""Fleet deploy scaling against the bundled vCenter simulator (`bash tools/dev.sh bench`).

Deploys 10 and 100 clones at concurrency 1 and 8, each run on a fresh simulator, side by side in one
run, and prints seconds per clone and the ratios: 100 vs 10 clones (about 1 means linear in fleet size)
and concurrency 8 vs 1 (the speed-up of the bounded thread pool).

The grid runs twice. First on the simulator as it is: its tasks finish in microseconds, so this measures
builder's own cost per clone, and on two cores nothing is left for threads to overlap. Then with the
simulator's method delays set to a vCenter-like task latency (`--task-latency`, by default 300 ms per
clone task and 100 ms per power-on, far below a real full clone): there each clone waits on vCenter, which
is the waiting the bounded pool exists to overlap.

    python bench/fleet_deploy.py [--sizes 10,100] [--concurrency 1,8] [--task-latency M=ms,...]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.deploy import deploy  # noqa: E402
from builder.fleet import load_fleet  # noqa: E402
from builder.vsphere.connection import Credentials, connect  # noqa: E402

VCSIM = REPO / ".bin" / "vcsim"
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


def main() -> int:
    """Run the grid without and with task latency and print the tables and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--task-latency", default="CloneVM_Task=300,PowerOnVM_Task=100")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    if not os.access(VCSIM, os.X_OK):
        sys.exit(f"{VCSIM} is missing: run `bash tools/dev.sh setup`")
    with tempfile.TemporaryDirectory(prefix="arcbake-bench-") as tmp:
        print("simulator as is (builder's own cost per clone):")
        run_grid(sizes, levels, "", Path(tmp))
        print(f"\nwith vCenter-like task latency ({args.task_latency} ms):")
        run_grid(sizes, levels, args.task_latency, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
