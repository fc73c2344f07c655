#!/usr/bin/env python3
"""firstboot's start-up: what `firstboot status` and a second `firstboot run` cost beside bare Python.

`firstboot status` is run by operators and by scripts polling with `--wait`; a second `firstboot run`
(the unit started again, or run by hand, after onboarding finished) should find every step stamped and
stop. Neither needs pydantic, the step modules or their clients, so neither should load them.

Each command runs as a fresh process against a `--root` prepared here (a status.json written through
the model; every step stamped for the clone's instance id and the done file), interleaved with the
others round by round so machine noise hits them alike; the median of `--rounds` is printed, with the
ratio to the `python -c pass` floor and whether pydantic, tenacity or any step module was imported
(`python -X importtime`). Cleans up its temporary root and writes no `__pycache__`.

    python bench/firstboot_startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
sys.dont_write_bytecode = True

from fixtures.guestinfo import onboarded_root  # noqa: E402

FIRSTBOOT = "import sys; from firstboot.cli import main; sys.exit(main())"
# Modules a lean command should not need: a name ending in "." stands for its submodules (the steps).
HEAVY = ("pydantic", "tenacity", "yaml", "dns", "urllib3", "azure", "firstboot.steps.")


def commands(root: Path, source: Path) -> dict[str, list[str]]:
    """The rows: name -> argv after `python`."""
    fb = ["-c", FIRSTBOOT]
    return {
        "python -c pass (floor)": ["-c", "pass"],
        "firstboot status": [*fb, "status", "--root", str(root)],
        "firstboot status --format json": [*fb, "status", "--root", str(root), "--format", "json"],
        "firstboot run (all stamped)": [*fb, "run", "--root", str(root), "--source", f"file:{source}"],
        "import firstboot.contract (pydantic)": ["-c", "import firstboot.contract"],
    }


def env() -> dict[str, str]:
    """The environment of every measured process: this tree first, no bytecode written."""
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}


def once(argv: list[str]) -> float:
    """Wall seconds of one process run to its exit."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], env=env(), capture_output=True, timeout=120, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0,):
        raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return seconds


def heavy_imports(argv: list[str]) -> list[str]:
    """Heavy modules the command imports (from `python -X importtime`)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=env(), capture_output=True, text=True, timeout=120
    )
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    found = set()
    for heavy in HEAVY:
        hits = [n for n in names if n.startswith(heavy) or (not heavy.endswith(".") and n == heavy)]
        if hits:
            found.add(f"{heavy}* ({len(hits)})" if heavy.endswith(".") else heavy)
    return sorted(found)


def main() -> int:
    """Prepare the root, run every row `--rounds` times interleaved, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="arcbake-bench-startup-"))
    try:
        source = onboarded_root(root)
        rows = commands(root, source)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, argv in rows.items():
                times[name].append(once(argv))
        floor = statistics.median(times["python -c pass (floor)"])
        print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; median of {args.rounds})")
        print(f"{'command':<38}  {'seconds':>7}  {'x floor':>7}  {'over floor':>10}  heavy imports")
        for name, argv in rows.items():
            median = statistics.median(times[name])
            heavy = ", ".join(heavy_imports(argv)) or "none"
            print(f"{name:<38}  {median:>7.3f}  {median / floor:>7.2f}  {median - floor:>9.3f}s  {heavy}")
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
