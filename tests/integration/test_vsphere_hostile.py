"""Hostile ground on the vSphere side (issue 8): guest text, secrets left in the VM's configuration,
a fleet VM named like the template, vCenter going away mid-deploy. All against the real simulator."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fixtures.vcsim import VcsimHandle, start_vcsim

from builder.cli import cli
from builder.guesttext import MAX_CHARS
from builder.status import SECRET_KEYS, SECRETS_REMOVED
from builder.vsphere import inventory
from builder.vsphere import vm as vmops
from firstboot import contract
from firstboot.encoding import GZIP_BASE64, decode, encode
from integration.vsphere_helpers import (
    SECRET_ENV,
    builder_until,
    fleet_file,
    session_for,
    set_extra,
    vm_extra,
    vm_info,
)

pytestmark = pytest.mark.integration


def run_cli(sim: VcsimHandle, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={**sim.env(), **SECRET_ENV}, catch_exceptions=False)


def raw_extra(sim: VcsimHandle, name: str) -> list[tuple[str, str]]:
    """Every extraConfig entry as vSphere holds it (duplicates included): what the .vmx would hold."""
    with session_for(sim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), name)
        return [(str(o.key), str(o.value)) for o in vm.config.extraConfig]


def status_json(**fields: Any) -> str:
    """A status as a guest could write it; json.dumps escapes control characters as \\u00XX, which is
    how they survive the trip through guestinfo and SOAP and come back as real bytes when decoded."""
    return json.dumps({"state": "running", "updated": "2026-01-01T00:00:00Z", **fields})


HOSTILE = (
    "\x1b]0;owned\x07\x1b[2J\x1b[1;1Hclock off\r\x1b[31m by 120s\x9b0m\x1b]52;c;Y3VybA==\x07 \u202e"
    + "A" * 5000
)


def _visible(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]
    assert not bad, f"control characters reached the output: {bad[:10]!r}"


@pytest.mark.fault(
    "guest status with terminal escapes (OSC title/clipboard, CSI), CR, bidi overrides, 70 KB",
    "stripped and capped before the terminal or JSON; too large: unreadable",
)
def test_status_strips_and_caps_guest_text(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-hostile")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    set_extra(
        vcsim,
        "ci-hostile-01",
        {contract.KEY_STATUS: status_json(step="\x1b[8mtime", message=HOSTILE, remedy="fix\rNTP\x07")},
    )
    # Not a valid status: pydantic quotes the offending input in its message.
    set_extra(
        vcsim, "ci-hostile-02", {contract.KEY_STATUS: json.dumps({"state": "\x1b]2;x\x07" + "B" * 900})}
    )
    set_extra(vcsim, "ci-hostile-03", {contract.KEY_STATUS: status_json(message="x" * 70_000)})

    text = run_cli(vcsim, "status", str(fleet))
    _visible(text.stdout + text.stderr)
    assert "clock off  by 120s" in text.stdout and "(remedy: fix NTP)" in text.stdout
    assert "guestinfo.arcbake.status is too large (70" in text.stdout
    assert "owned" not in text.stdout and "Y3VybA" not in text.stdout

    as_json = run_cli(vcsim, "status", str(fleet), "--format", "json")
    rows = {r["name"]: r for r in json.loads(as_json.stdout)["vms"]}
    one = rows["ci-hostile-01"]
    assert one["state"] == "running" and one["step"] == "time"
    assert len(one["message"]) == MAX_CHARS and one["message"].endswith("...")
    assert rows["ci-hostile-02"]["state"] == "unreadable"
    for row in rows.values():
        for value in row.values():
            if isinstance(value, str):
                _visible(value)
                assert len(value) <= 2 * MAX_CHARS


def _secrets_everywhere(sim: VcsimHandle, name: str) -> list[str]:
    """Keys of VM `name` whose raw or decoded value holds a secret value of SECRET_ENV."""
    found = []
    entries = raw_extra(sim, name)
    encodings = dict(entries)
    for key, value in entries:
        texts = [value]
        if key.startswith("guestinfo.") and not key.endswith(contract.ENCODING_SUFFIX):
            encoding = encodings.get(key + contract.ENCODING_SUFFIX)
            if encoding:
                texts.append(decode(value, encoding).decode("utf-8", "replace"))
        if any(secret in t for t in texts for secret in SECRET_ENV.values()):
            found.append(key)
    return found


def test_secrets_leave_the_vm_configuration_once_past_metadata(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-wipe")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    names = ("ci-wipe-01", "ci-wipe-02", "ci-wipe-03")
    for name in names:
        # Deployed: the secrets key holds them, and no other key (raw or decoded) ever does.
        assert _secrets_everywhere(vcsim, name) == [contract.KEY_SECRETS], name

    # Still at metadata: the guest may not have persisted them yet; failing there: same.
    set_extra(vcsim, "ci-wipe-01", {contract.KEY_STATUS: status_json(step="metadata")})
    set_extra(vcsim, "ci-wipe-03", {contract.KEY_STATUS: status_json(state="failed", step="metadata")})
    early = run_cli(vcsim, "status", str(fleet))
    assert "removed" not in early.stderr
    assert all(contract.KEY_SECRETS in dict(raw_extra(vcsim, n)) for n in names)

    # Past metadata: status removes both keys from the configuration itself and says so, once.
    set_extra(vcsim, "ci-wipe-01", {contract.KEY_STATUS: status_json(step="hostname")})
    past = run_cli(vcsim, "status", str(fleet), "--format", "json")
    assert f"ci-wipe-01: {SECRETS_REMOVED}" in past.stderr
    rows = {r["name"]: r for r in json.loads(past.stdout)["vms"]}
    assert rows["ci-wipe-01"]["secrets"] == SECRETS_REMOVED and rows["ci-wipe-02"]["secrets"] is None
    assert not set(SECRET_KEYS) & {k for k, _ in raw_extra(vcsim, "ci-wipe-01")}
    assert _secrets_everywhere(vcsim, "ci-wipe-01") == []
    assert "removed" not in run_cli(vcsim, "status", str(fleet)).stderr

    # deploy does the same for a VM it leaves unchanged, and the VM stays unchanged (same identity).
    set_extra(vcsim, "ci-wipe-02", {contract.KEY_STATUS: status_json(state="done", step="flux")})
    again = run_cli(vcsim, "deploy", str(fleet), "--format", "json")
    assert again.exit_code == 0, again.output
    report = {v["name"]: v for v in json.loads(again.stdout)["vms"]}
    assert [report[n]["action"] for n in names] == ["unchanged"] * 3
    assert SECRETS_REMOVED in report["ci-wipe-02"]["message"]
    assert "removed" not in report["ci-wipe-03"]["message"]
    assert _secrets_everywhere(vcsim, "ci-wipe-02") == []
    assert _secrets_everywhere(vcsim, "ci-wipe-03") == [contract.KEY_SECRETS]
    assert contract.KEY_CONFIG in vm_extra(vcsim, "ci-wipe-02"), "only the secrets keys are removed"

    # A template is never reconfigured, even one made from a clone that reported past metadata.
    set_extra(vcsim, "ci-wipe-03", {contract.KEY_STATUS: status_json(state="done", step="flux")})
    with session_for(vcsim) as s:
        vm = inventory.vm(s, inventory.datacenter(s, "DC0"), "ci-wipe-03")
        vmops.power_off(vm, "ci-wipe-03")
        vm.MarkAsTemplate()
    as_template = run_cli(vcsim, "status", str(fleet))
    assert "removed" not in as_template.stderr and "ci-wipe-03" in as_template.stdout
    assert _secrets_everywhere(vcsim, "ci-wipe-03") == [contract.KEY_SECRETS]


@pytest.mark.fault(
    "deploy --replace with a fleet VM named like the template", "exit 1 naming it; template kept; no clone"
)
def test_replace_never_deletes_the_template(fresh_vcsim: VcsimHandle, tmp_path: Path) -> None:
    # A template whose name is also a fleet VM's name (the issue 8 repro deleted it, then crashed).
    with session_for(fresh_vcsim) as s:
        dc = inventory.datacenter(s, "DC0")
        source = inventory.vm(s, dc, "DC0_H0_VM0")
        where = inventory.placement(s, datacenter_name="DC0", host_name="DC0_H0", folder_path="")
        tpl = vmops.clone(source, "tpl-rep-01", where, {}, template=True)
        tpl_moid = tpl._moId
    fleet = fleet_file(tmp_path, "tpl-rep", template="tpl-rep-01")
    for args in (("deploy", str(fleet)), ("deploy", str(fleet), "--replace")):
        result = run_cli(fresh_vcsim, *args)
        assert result.exit_code == 1, result.output
        assert "VM 'tpl-rep-01' is the fleet's clone source; deploy never deletes or changes a template" in (
            result.stderr
        )
        assert "nothing was changed" in result.stderr
        info = vm_info(fresh_vcsim, "tpl-rep-01")
        assert info["count"] == 1 and info["moids"] == [tpl_moid]
        assert vm_info(fresh_vcsim, "tpl-rep-02")["count"] == 0, "nothing cloned"


@pytest.mark.fault("vSphere: vCenter killed mid-deploy", "exit 1, one line naming the server and the VM")
def test_vcenter_killed_mid_deploy_is_one_line(tmp_path: Path) -> None:
    sim = start_vcsim("-method-delay", "CloneVM_Task=2000")
    try:
        fleet = fleet_file(tmp_path, "ci-kill")
        # -v logs "cloning NAME from TEMPLATE" as each clone starts.
        proc, before = builder_until(
            ["-v", "deploy", str(fleet)], {**sim.env(), **SECRET_ENV}, "cloning ci-kill-0"
        )
        time.sleep(0.3)  # inside the first clone task (2 s on the simulator)
        sim.proc.kill()
        sim.proc.wait()
        out, rest = proc.communicate(timeout=120)
        err = "".join(before) + rest
    finally:
        sim.stop()
    assert proc.returncode == 1, err
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert f"vCenter {sim.server}: connection lost while deploying VM 'ci-kill-0" in errors[0]
    for secret in (sim.password, *SECRET_ENV.values()):
        assert secret not in out + err


def test_secrets_of_a_newer_generation_stay_until_the_clone_reports_it(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    fleet = fleet_file(tmp_path, "ci-gen")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    # What `builder rotate` leaves: a generation-2 set in the key, while the clone still reports 1.
    rotated = json.dumps({"generation": 2, "k3s_token": SECRET_ENV["K3S_TOKEN"]})
    set_extra(
        vcsim,
        "ci-gen-01",
        {
            contract.KEY_SECRETS: encode(rotated, GZIP_BASE64),
            contract.KEY_SECRETS + contract.ENCODING_SUFFIX: GZIP_BASE64,
            contract.KEY_STATUS: status_json(state="done", step="flux", generation=1),
        },
    )
    assert "removed" not in run_cli(vcsim, "status", str(fleet)).stderr
    assert contract.KEY_SECRETS in dict(raw_extra(vcsim, "ci-gen-01"))

    set_extra(vcsim, "ci-gen-01", {contract.KEY_STATUS: status_json(state="done", step="flux", generation=2)})
    shown = run_cli(vcsim, "status", str(fleet))
    assert f"ci-gen-01: {SECRETS_REMOVED}" in shown.stderr
    assert not set(SECRET_KEYS) & {k for k, _ in raw_extra(vcsim, "ci-gen-01")}
    assert "GEN" in shown.stdout.splitlines()[0]
