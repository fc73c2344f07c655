"""Lean start-up: `firstboot status` and a second, fully stamped `firstboot run` load only what they use.

Checked in a fresh interpreter each (this one has imported everything already): which heavy modules a
command leaves in `sys.modules`, and that the lean status reader shows exactly what the model path does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.guestinfo import onboarded_root

from firstboot import cli, statusview
from firstboot.contract import State, Status
from firstboot.state import StateStore

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from firstboot.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def probe(*args: str) -> tuple[int, set[str], str]:
    """(exit code, modules loaded, stdout before the probe's line) of `firstboot ARGS` in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    *shown, last = out.stdout.strip().splitlines()
    result = json.loads(last)
    return result["code"], set(result["modules"]), "\n".join(shown)


HEAVY = ("pydantic", "yaml", "tenacity", "logging", "firstboot.contract", "firstboot.engine")


def test_status_loads_no_model(tmp_path: Path) -> None:
    onboarded_root(tmp_path)
    for fmt in ("text", "json"):
        code, modules, shown = probe("status", "--root", str(tmp_path), "--format", fmt)
        assert code == 0 and "onboarded" in shown
        assert not [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY]


def test_stamped_second_run_loads_no_step(tmp_path: Path) -> None:
    source = onboarded_root(tmp_path, "iid-lean")
    code, modules, shown = probe("run", "--root", str(tmp_path), "--source", f"file:{source}")
    assert code == 0 and "already onboarded (instance iid-lean)" in shown
    assert not [m for m in modules if m.startswith("firstboot.steps.")], "a step module was imported"
    assert "tenacity" not in modules and "dns" not in modules


def test_lean_and_model_paths_show_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onboarded_root(tmp_path)
    model = StateStore(tmp_path).read_status()
    assert model is not None
    loaded = statusview.load(tmp_path)
    assert loaded is not None
    raw, data = loaded
    assert raw == model.to_json()
    assert statusview.text(data) == statusview.text(model.model_dump(mode="json"))
    assert cli.main(["status", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == statusview.text(data)


@pytest.mark.parametrize(
    ("content", "state", "code"),
    [
        (None, "pending", 2),  # not run yet: the model's default
        ('{"state": "bogus", "message": ""}', "pending", 2),  # not a status: the model refuses it
        ("[1, 2]", "pending", 2),
        ("not json", "pending", 2),
        (
            Status(state=State.FAILED, step="time", message="clock off", remedy="fix NTP").to_json(),
            "failed",
            1,
        ),
        (Status(state=State.RUNNING, step="k3s", message="waiting").to_json(), "running", 2),
    ],
)
def test_status_shapes_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, state: str, code: int
) -> None:
    if content is not None:
        StateStore(tmp_path).write_status(Status(state=State.PENDING))  # creates the private state dir
        (tmp_path / "var/lib/arcbake/status.json").write_text(content)
    assert cli.main(["status", "--root", str(tmp_path), "--format", "json"]) == code
    assert json.loads(capsys.readouterr().out)["state"] == state
