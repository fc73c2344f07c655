"""The README's first command: the demo runs end to end on the simulator: three clones deployed, their first
boots played, every clone `done` with its timings in `builder status`, and the report page written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot.steps import ORDER

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_demo_end_to_end() -> None:
    env = {**os.environ, "NO_COLOR": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "fleet demo from template demo-rocky9-k3s-" in out and "3 cloned" in out and "3 unchanged" in out
    for name in ("edge-demo-01", "edge-demo-02", "edge-demo-03"):
        assert f"-- {name}  (vm-" in out
    assert "server_url: https://192.168.50.11:6443" in out
    assert "k3s_token: '******** (" in out
    assert "fake-sp-secret-" not in out and "fake-k3s-token-" not in out
    assert "simulator, which runs no guest OS" in out
    assert proc.stdout.rstrip().endswith("stopped")

    # Every clone's first boot played, and `builder status --wait` shows each one done with its timings.
    played, after = out.split("== 6. Play each clone's first boot", 1)[1].split("== 7. ", 1)
    for name in ("edge-demo-01", "edge-demo-02", "edge-demo-03"):
        assert re.search(rf"{name}: firstboot run exit 0, done in [\d.]+s", played), played
    status = after.split("== 8. ", 1)[0]
    rows = [line for line in status.splitlines() if line.startswith("edge-demo-")]
    assert len(rows) == 3, status
    for row in rows:
        assert re.match(r"edge-demo-0\d\s+poweredOn\s+done\s+-\s+[\d.]+s \(slowest \w+ [\d.]+s\)", row), row
    assert "fake-sp-secret-" not in out and "fake-k3s-token-" not in out

    # The report page is where the demo says, with a row per VM and every step timed.
    report = REPO / "build" / "demo-report.html"
    assert f"file://{report}" in out
    page = report.read_text()
    for name in ("edge-demo-01", "edge-demo-02", "edge-demo-03"):
        assert page.count(f'<tr class="vm" data-vm="{name}" data-state="done">') == 1
    assert re.findall(r'<tr class="step" data-step="([a-z0-9-]+)">', page) == list(ORDER)
    assert "fake-sp-secret-" not in page and "fake-k3s-token-" not in page
