"""builder report on the simulator: guests played by the test through the vSphere API (what firstboot's
`vmware-rpctool info-set guestinfo.arcbake.status` shows), the page read back in headless Chromium."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import browser
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from firstboot import contract
from firstboot.contract import State, Status, StepOutcome, StepTiming
from integration.vsphere_helpers import SECRET_ENV, fleet_file, session_for

pytestmark = pytest.mark.integration

STEPS = ["metadata", "hostname", "time", "dns", "k3s"]


def play_guest(sim: VcsimHandle, name: str, seconds: list[float], failed: bool = False) -> None:
    t = datetime.now(UTC) - timedelta(minutes=10)
    timings = []
    for step, took in zip(STEPS, seconds, strict=False):
        outcome = StepOutcome.FAILED if failed and step == STEPS[len(seconds) - 1] else StepOutcome.DONE
        timings.append(StepTiming(step=step, started=t, ended=t + timedelta(seconds=took), outcome=outcome))
        t += timedelta(seconds=took)
    status = (
        Status(
            state=State.FAILED,
            step=timings[-1].step,
            message="no NTP server answered",
            remedy="open UDP 123",
            steps=timings,
        )
        if failed
        else Status(state=State.DONE, message="onboarded", steps=timings)
    )
    with session_for(sim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), name)
        vmops.set_extra_config(vm, {contract.KEY_STATUS: status.to_json()}, "test guest status")


@pytest.mark.slow
def test_report_of_a_played_fleet_in_chromium(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-rep")
    env = {**vcsim.env(), **SECRET_ENV}
    assert CliRunner().invoke(cli, ["deploy", str(fleet)], env=env).exit_code == 0
    play_guest(vcsim, "ci-rep-01", [1, 2, 3, 4, 60])
    play_guest(vcsim, "ci-rep-02", [1, 2, 5, 4, 30])
    play_guest(vcsim, "ci-rep-03", [1, 2, 9], failed=True)

    page = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(cli, ["report", str(fleet), "-o", str(page), "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["report"] == str(page.absolute()) and doc["vms"] == 3
    assert doc["states"] == {"ci-rep-01": "done", "ci-rep-02": "done", "ci-rep-03": "failed"}
    k3s = next(s for s in doc["steps"] if s["step"] == "k3s")
    assert k3s == {"step": "k3s", "runs": 2, "median": 45.0, "slowest_vm": "ci-rep-01", "slowest": 60.0}

    dom = browser.dump_dom(page)
    for name in ("ci-rep-01", "ci-rep-02", "ci-rep-03"):
        assert dom.count(f'<tr class="vm" data-vm="{name}"') == 1
    for step in STEPS:
        assert f'<g class="run" data-step="{step}"' in dom
        assert f'<tr class="step" data-step="{step}">' in dom
    assert '<tr class="failure" data-vm="ci-rep-03">' in dom and "open UDP 123" in dom
    png = tmp_path / "report.png"
    browser.screenshot(page, png)
    assert png.stat().st_size > 10_000
