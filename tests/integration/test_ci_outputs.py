"""CI outputs against the simulator: build's JUnit and events, deploy's events, each VM printed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import junitparser
import pytest
from fixtures.vcsim import VcsimHandle

from builder.validators import VALIDATORS
from integration.vsphere_helpers import REPO, SECRET_ENV, fleet_file

pytestmark = pytest.mark.integration

BUILDER = str(Path(sys.executable).parent / "builder")


def builder(sim: VcsimHandle, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **sim.env(), **SECRET_ENV}
    env.pop("NO_COLOR", None)
    return subprocess.run(
        [BUILDER, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.allow_subp("packer", "git", *[tool for tool, _ in VALIDATORS.values()], "ksvalidator")
def test_build_junit_and_events_on_the_simulator(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    junit = tmp_path / "build.xml"
    log = tmp_path / "events.jsonl"
    proc = builder(
        fresh_vcsim, "build", "examples/demo-image.yaml", "-o", str(tmp_path / "b"), "-q",
        "--junit", str(junit), "--events", str(log), "--format", "json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["template"]["is_template"] is True
    # -q: neither progress nor Packer's streamed lines on stderr.
    assert "==>" not in proc.stderr and "[00:" not in proc.stderr, proc.stderr

    xml = junitparser.JUnitXml.fromfile(str(junit))
    cases = [case for suite in xml for case in suite]
    assert sorted(c.name for c in cases) == sorted(VALIDATORS)
    assert all(c.is_passed for c in cases), [(c.name, c.result) for c in cases]

    lines = events(log)
    assert {ln["command"] for ln in lines} == {"build"}
    finished = [ln for ln in lines if ln["event"] == "step_finished"]
    steps = [ln["step"] for ln in finished]
    for name in (
        "preflight",
        "render",
        "validators",
        "wheelhouse",
        "packer validate",
        "packer build",
        "publish",
    ):
        assert name in steps, steps
    assert steps.count("validator") == len(VALIDATORS)
    assert "packer stage" in steps  # each `==>` stage of Packer, even with -q
    assert all(ln["ok"] and ln["duration_seconds"] >= 0 for ln in finished)
    assert lines[-1]["event"] == "command_finished" and lines[-1]["ok"] is True


@pytest.mark.allow_subp("packer", "git")
def test_build_rejected_spec_writes_an_error_event_and_json(vcsim: VcsimHandle, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text((REPO / "examples/demo-image.yaml").read_text() + "\nbogus: 1\n")
    log = tmp_path / "events.jsonl"
    proc = builder(vcsim, "build", str(spec), "--events", str(log), "--format", "json")
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 3 and doc["issues"][0]["path"] == "bogus"
    assert [ln["event"] for ln in events(log)] == ["command_started", "error", "command_finished"]


def test_deploy_events_per_vm_and_each_vm_printed_once(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-evt")
    log = tmp_path / "deploy.jsonl"
    proc = builder(vcsim, "deploy", str(fleet), "--events", str(log))
    assert proc.returncode == 0, proc.stderr
    for name in ("ci-evt-01", "ci-evt-02", "ci-evt-03"):
        assert (proc.stdout + proc.stderr).count(name) == 1, proc.stdout + proc.stderr
    lines = events(log)
    for name in ("ci-evt-01", "ci-evt-02", "ci-evt-03"):
        mine = [(ln["event"], ln["step"]) for ln in lines if ln.get("vm") == name]
        assert mine == [
            ("step_started", "clone"),
            ("step_finished", "clone"),
            ("step_started", "power-on"),
            ("step_finished", "power-on"),
        ]
        clone = next(ln for ln in lines if ln.get("vm") == name and ln["event"] == "step_finished")
        assert clone["moid"].startswith("vm-") and clone["duration_seconds"] > 0
    # Appended, not replaced: a second deploy adds its own lines (all VMs unchanged).
    assert builder(vcsim, "deploy", str(fleet), "--events", str(log)).returncode == 0
    again = events(log)[len(lines) :]
    assert [ln["vm"] for ln in again if ln["event"] == "vm_unchanged"] == [
        "ci-evt-01",
        "ci-evt-02",
        "ci-evt-03",
    ]
    assert sum(ln["event"] == "command_started" for ln in events(log)) == 2


def test_destroy_events_through_the_same_api(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-dev")
    assert builder(vcsim, "deploy", str(fleet)).returncode == 0
    log = tmp_path / "destroy.jsonl"
    proc = builder(vcsim, "destroy", str(fleet), "--keep-arc", "--yes", "--events", str(log))
    assert proc.returncode == 0, proc.stderr
    lines = events(log)
    assert {ln["command"] for ln in lines} == {"destroy"}
    finished = [ln for ln in lines if ln["event"] == "step_finished"]
    assert [(ln["step"], ln["ok"]) for ln in finished] == [("destroy", True)]
    said = " ".join(ln["message"] for ln in lines if ln["event"] == "progress")
    assert all(name in said for name in ("ci-dev-01", "ci-dev-02", "ci-dev-03")), said
    assert lines[-1]["event"] == "command_finished" and lines[-1]["ok"] is True
