"""The README's first command: the demo runs end to end on the simulator and shows three clones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
        timeout=240,
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
