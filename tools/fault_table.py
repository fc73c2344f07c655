"""The fault table: every fault the test suite injects, what arcbake should do, and what it did.

    bash tools/dev.sh faults [PYTEST ARGS...]

Runs the tests marked `@pytest.mark.fault(fault, expected)` (see tools/fault_plugin.py) and prints one row
per fault: fault | expected | observed (survived, failed, skipped). Exit status 0 only when every row
survived. Extra arguments go to pytest (e.g. `-k dns`, or `-m "fault and not boot"`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def render(rows: list[dict[str, str]], width: int) -> str:
    """The rows as a plain-text table sized to `width` columns."""
    obs_w = max([len("observed"), *(len(r["observed"]) for r in rows)])
    rest = max(40, width - obs_w - 7)
    fault_w = rest // 2
    exp_w = rest - fault_w
    sep = f"{'-' * fault_w}-+-{'-' * exp_w}-+-{'-' * obs_w}"
    out = [f"{'fault':<{fault_w}} | {'expected':<{exp_w}} | observed", sep]
    for row in rows:
        left, mid = _wrap(row["fault"], fault_w), _wrap(row["expected"], exp_w)
        right = [row["observed"]]
        for i in range(max(len(left), len(mid))):
            cells = [
                left[i] if i < len(left) else "",
                mid[i] if i < len(mid) else "",
                right[i] if i < len(right) else "",
            ]
            out.append(f"{cells[0]:<{fault_w}} | {cells[1]:<{exp_w}} | {cells[2]}".rstrip())
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Run the fault tests, print the table, return 0 when every fault was survived."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tools"), env.get("PYTHONPATH")) if p)
        has_marker_expr = any(a == "-m" or a.startswith("-m") for a in argv)
        cmd = [sys.executable, "-m", "pytest", "-p", "fault_plugin", f"--fault-report={report}", "-q"]
        cmd += [] if has_marker_expr else ["-m", "fault"]
        proc = subprocess.run([*cmd, *argv], cwd=REPO, env=env, check=False)
        if not report.exists():
            print(f"fault_table: pytest wrote no report (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode or 1
        rows = json.loads(report.read_text())
    # A parametrised test repeats its fault text: tell the cases apart by their pytest id.
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["fault"]] = seen.get(row["fault"], 0) + 1
    for row in rows:
        if seen[row["fault"]] > 1 and row["test"].endswith("]"):
            row["fault"] += " [" + row["test"].rsplit("[", 1)[-1]
    width = shutil.get_terminal_size((140, 40)).columns
    print()
    print(render(rows, width))
    survived = sum(r["observed"] == "survived" for r in rows)
    print(f"\n{survived}/{len(rows)} faults survived")
    for row in rows:
        if row["observed"] != "survived":
            print(f"  {row['observed']}: {row['test']}: {row['detail']}")
    return 0 if rows and survived == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
