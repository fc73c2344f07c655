"""builder deploy / status against the real vCenter simulator, checked with cloud-init's own decoder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from firstboot import contract
from firstboot.contract import OnboardingConfig, State, Status, StepOutcome, StepTiming
from integration.vsphere_helpers import (
    SECRET_ENV,
    cloudinit_decode,
    fleet_file,
    set_extra,
    vm_extra,
    vm_info,
    vm_raw_keys,
)

pytestmark = pytest.mark.integration


def run_cli(sim: VcsimHandle, *args: str, **env: str) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={**sim.env(), **SECRET_ENV, **env}, catch_exceptions=False)


def test_deploy_writes_guestinfo_that_cloudinit_decodes(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-dec")
    result = run_cli(vcsim, "deploy", str(fleet), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["action"] for v in report["vms"]] == ["cloned"] * 3

    server = cloudinit_decode(vm_extra(vcsim, "ci-dec-01"))
    md = server["metadata"]
    assert md["local-hostname"] == "ci-dec-01"
    assert md["instance-id"].startswith("iid-arcbake-ci-dec-01-")
    nic = md["network"]["config"]["ethernets"]["ens192"]
    assert nic["addresses"] == ["192.168.50.11/24"]
    assert nic["routes"] == [{"to": "0.0.0.0/0", "via": "192.168.50.1"}]
    assert nic["nameservers"]["addresses"] == ["192.168.50.1"]
    assert server["userdata"].startswith("#cloud-config\n")
    assert "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemo" in server["userdata"]
    config = OnboardingConfig.model_validate_json(server["config"])
    assert config.k3s.role.value == "server"
    assert config.arc is not None and config.arc.cluster_name == "edge-demo"
    assert config.arc.tags == {"env": "demo", "site": "demo-01"}
    assert [c.name for c in config.flux.configurations] == ["platform"]
    secrets = contract.OnboardingSecrets.model_validate_json(server["secrets"])
    assert (
        secrets.sp_secret is not None and secrets.sp_secret.get_secret_value() == SECRET_ENV["ARC_SP_SECRET"]
    )
    assert secrets.k3s_token is not None and secrets.k3s_token.get_secret_value() == SECRET_ENV["K3S_TOKEN"]

    agent = cloudinit_decode(vm_extra(vcsim, "ci-dec-02"))
    agent_cfg = OnboardingConfig.model_validate_json(agent["config"])
    assert agent_cfg.k3s.role.value == "agent"
    assert agent_cfg.k3s.server_url == "https://192.168.50.11:6443"
    assert agent_cfg.arc is None
    agent_secrets = contract.OnboardingSecrets.model_validate_json(agent["secrets"])
    assert agent_secrets.sp_secret is None, "agents get no Azure secret"
    dhcp_agent = cloudinit_decode(vm_extra(vcsim, "ci-dec-03"))
    assert dhcp_agent["metadata"]["network"]["config"]["ethernets"]["ens192"]["dhcp4"] is True

    extra = vm_extra(vcsim, "ci-dec-01")
    for key in (contract.KEY_METADATA, contract.KEY_USERDATA, contract.KEY_CONFIG, contract.KEY_SECRETS):
        assert extra[key + ".encoding"] == "gzip+base64"
    assert vm_info(vcsim, "ci-dec-01")["power"] == ["poweredOn"]
    # Secrets are in the secrets key only: never in the report, the config or the non-guestinfo marks.
    assert SECRET_ENV["ARC_SP_SECRET"] not in result.output
    assert not any(
        SECRET_ENV["ARC_SP_SECRET"] in v for k, v in extra.items() if not k.startswith("guestinfo.")
    )


def test_redeploy_changes_nothing_and_changed_config_needs_replace(
    vcsim: VcsimHandle, tmp_path: Path
) -> None:
    fleet = fleet_file(tmp_path, "ci-idem")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0
    before = {
        n: (vm_info(vcsim, n), vm_raw_keys(vcsim, n)) for n in ("ci-idem-01", "ci-idem-02", "ci-idem-03")
    }

    again = run_cli(vcsim, "deploy", str(fleet), "--format", "json")
    assert again.exit_code == 0, again.output
    assert [v["action"] for v in json.loads(again.stdout)["vms"]] == ["unchanged"] * 3
    after = {n: (vm_info(vcsim, n), vm_raw_keys(vcsim, n)) for n in before}
    assert after == before  # same VMs, no extra clone, no key written twice

    changed = fleet_file(tmp_path, "ci-idem", subst={"site: demo-01": "site: moved"})
    conflict = run_cli(vcsim, "deploy", str(changed))
    assert conflict.exit_code == 1
    assert "'ci-idem-01' exists with a different configuration" in conflict.stderr
    assert "--replace" in conflict.stderr and "nothing was changed" in conflict.stderr
    assert {n: (vm_info(vcsim, n), vm_raw_keys(vcsim, n)) for n in before} == before

    (tmp_path / "other").mkdir()
    other_template = fleet_file(tmp_path / "other", "ci-idem", template="DC0_H0_VM1")
    moved = run_cli(vcsim, "deploy", str(other_template))
    assert moved.exit_code == 1
    assert "cloned from template 'DC0_H0_VM0' (the fleet now resolves to 'DC0_H0_VM1')" in moved.stderr

    # The server alone may not be replaced beside its running agents (tests/integration/
    # test_deploy_replace.py); the whole cluster may, and is.
    alone = run_cli(vcsim, "deploy", str(changed), "--replace")
    assert alone.exit_code == 1 and "use `builder rollout --template DC0_H0_VM0`" in alone.stderr
    assert {n: (vm_info(vcsim, n), vm_raw_keys(vcsim, n)) for n in before} == before
    (tmp_path / "all").mkdir()
    whole = fleet_file(tmp_path / "all", "ci-idem", subst={"0.rocky.pool.ntp.org": "1.rocky.pool.ntp.org"})
    replaced = run_cli(vcsim, "deploy", str(whole), "--replace", "--format", "json", "--concurrency", "1")
    assert replaced.exit_code == 0, replaced.output
    actions = {v["name"]: v["action"] for v in json.loads(replaced.stdout)["vms"]}
    assert actions == dict.fromkeys(before, "replaced")
    info = vm_info(vcsim, "ci-idem-01")
    assert info["count"] == 1 and info["moids"] != before["ci-idem-01"][0]["moids"]


def test_concurrency_is_bounded(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-conc", agents=8)
    result = run_cli(vcsim, "deploy", str(fleet), "--concurrency", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["vms"]) == 9
    assert report["max_in_flight"] == 3

    serial = fleet_file(tmp_path, "ci-ser", agents=3)
    one = json.loads(run_cli(vcsim, "deploy", str(serial), "--concurrency", "1", "--format", "json").stdout)
    assert one["max_in_flight"] == 1


def test_missing_secret_env_is_an_input_error(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-nosec")
    result = CliRunner().invoke(
        cli, ["deploy", str(fleet)], env={**vcsim.env(), "K3S_TOKEN": "x" * 10, "ARC_SP_SECRET": ""}
    )
    assert result.exit_code == 3
    assert "environment variable ARC_SP_SECRET is not set" in result.stderr
    assert vm_info(vcsim, "ci-nosec-01")["count"] == 0, "nothing is cloned when a secret is missing"


def _set_status(sim: VcsimHandle, name: str, status: Status) -> None:
    # What firstboot's `vmware-rpctool info-set guestinfo.arcbake.status ...` shows through the API.
    set_extra(sim, name, {contract.KEY_STATUS: status.to_json()})


def test_status_reads_guest_reports(vcsim: VcsimHandle, tmp_path: Path) -> None:
    fleet = fleet_file(tmp_path, "ci-stat")
    assert run_cli(vcsim, "deploy", str(fleet)).exit_code == 0

    pending = run_cli(vcsim, "status", str(fleet))
    assert pending.exit_code == 0
    assert pending.stdout.count("  no report  ") == 3
    assert "vCenter simulator, which runs no guest OS" in pending.stdout
    # No guest of the simulator can report: --wait returns at once instead of polling to its timeout.
    t0 = time.monotonic()
    waited = run_cli(vcsim, "status", str(fleet), "--wait", "--timeout", "600", "--interval", "5")
    assert time.monotonic() - t0 < 30
    assert waited.exit_code == 1
    assert "no report can come from ci-stat-01, ci-stat-02, ci-stat-03; not waiting" in waited.stderr

    # One VM still running: it is waited for, named as the slowest, until the timeout.
    started = datetime.now(UTC) - timedelta(seconds=90)
    for name in ("ci-stat-02", "ci-stat-03"):
        _set_status(vcsim, name, Status(state=State.DONE, step=None, message="onboarded"))
    _set_status(
        vcsim,
        "ci-stat-01",
        Status(
            state=State.RUNNING,
            step="k3s",
            message="waiting for the node",
            steps=[StepTiming(step="k3s", started=started)],
        ),
    )
    slow = run_cli(vcsim, "status", str(fleet), "--wait", "--timeout", "0.5", "--interval", "0.2")
    assert slow.exit_code == 1 and "not every VM finished" in slow.stderr
    assert re.search(r"waiting: 1 running, 2 done; slowest: ci-stat-01 \(k3s, 9\ds\)", slow.stderr), (
        slow.stderr
    )

    _set_status(vcsim, "ci-stat-01", Status(state=State.RUNNING, step="time", message="waiting for NTP"))
    timing = StepTiming(
        step="time",
        started=started,
        ended=started + timedelta(seconds=4),
        attempts=2,
        outcome=StepOutcome.DONE,
    )
    for name in ("ci-stat-01", "ci-stat-02", "ci-stat-03"):
        _set_status(vcsim, name, Status(state=State.DONE, step="flux", message="onboarded", steps=[timing]))
    done = run_cli(vcsim, "status", str(fleet), "--wait", "--timeout", "5", "--format", "json")
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)["vms"]
    assert [r["state"] for r in rows] == ["done"] * 3 and rows[0]["step"] == "flux"
    assert json.loads(done.stdout)["ok"] is True
    assert rows[0]["steps"] == [json.loads(timing.model_dump_json())]

    _set_status(
        vcsim,
        "ci-stat-02",
        Status(state=State.FAILED, step="time", message="clock off by 120s", remedy="fix NTP"),
    )
    failed = run_cli(vcsim, "status", str(fleet))
    assert failed.exit_code == 1
    assert "clock off by 120s (remedy: fix NTP)" in failed.stdout
    assert run_cli(vcsim, "status", str(fleet), "--wait", "--timeout", "1").exit_code == 1


def _builder(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args]
        if False
        else [str(Path(sys.executable).parent / "builder"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.fault(
    "vSphere: wrong password / unreachable / missing template, datastore, network",
    "exit 1, one line naming it",
)
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("password", "login failed for user 'arcbake-ci@vsphere.local': wrong user name or password"),
        ("unreachable", "vCenter 127.0.0.1:{port}: unreachable"),
        ("template", "template 'no-such-template' not found in datacenter 'DC0'"),
        ("datastore", "datastore 'NoSuchDS' not found in datacenter 'DC0'"),
        ("network", "network 'No Such Net' not found in datacenter 'DC0'"),
        ("datacenter", "datacenter 'DC9' not found on 127.0.0.1:"),
        ("tls", "TLS certificate not trusted"),
    ],
)
def test_vsphere_failures_are_one_line(vcsim: VcsimHandle, tmp_path: Path, case: str, expected: str) -> None:
    env = {**vcsim.env(), **SECRET_ENV}
    subst: dict[str, str] = {}
    template = "DC0_H0_VM0"
    if case == "password":
        env["VSPHERE_PASSWORD"] = "Wrong-Password-91"
    elif case == "unreachable":
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env["VSPHERE_SERVER"] = f"127.0.0.1:{port}"
        expected = expected.format(port=port)
    elif case == "template":
        template = "no-such-template"
    elif case == "datastore":
        subst["datastore: LocalDS_0"] = "datastore: NoSuchDS"
    elif case == "network":
        subst["network: VM Network"] = "network: No Such Net"
    elif case == "tls":
        del env["VSPHERE_INSECURE"]  # verified by default: the simulator's certificate is self-signed
    elif case == "datacenter":
        subst["datacenter: DC0"] = "datacenter: DC9"
    fleet = fleet_file(tmp_path, f"ci-f{case[:4]}", template=template, subst=subst)
    for command in ("deploy", "status"):
        if command == "status" and case in ("template", "datastore", "network"):
            continue
        proc = _builder(env, command, str(fleet))
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert expected in lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout
        for secret in (vcsim.password, env["VSPHERE_PASSWORD"], *SECRET_ENV.values()):
            assert secret not in proc.stderr + proc.stdout
    assert vm_info(vcsim, f"ci-f{case[:4]}-01")["count"] == 0
