"""Secrets: the service principal secret and the Git token planted in guestinfo appear in no log line, no
status, no argv recorded by the az and systemctl doubles and, once onboarding is done, no file under the
root (the instance's secrets file keeps only the generation; az's credential store is signed out and
removed after connect), across a full `firstboot run -v` (debug
logging) that also survives an az error echoing the secret, then `firstboot status` and `firstboot doctor`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import Fault
from doubles.world import GIT_SECRET, SP_SECRET, onboarding_world, run_once

from firstboot import azcli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.allow_subp(all=True)
@pytest.mark.fault(
    "az echoes the service principal secret in an error message",
    "redacted (***) in logs and status; the secrets file held them until done, then only the generation",
)
def test_planted_secrets_stay_in_the_secrets_file(
    preflight_world: Any, guest_root: Path, tmp_path: Path
) -> None:
    # An az that echoes the secret in an error (a proxy error page quoting the request, say): retried,
    # and redacted wherever firstboot writes the message.
    echo = {
        "command": "connectedk8s connect",
        "mode": "transient",
        "times": 1,
        "message": f"bad gateway {SP_SECRET}",
    }
    with onboarding_world(preflight_world, guest_root, tmp_path / "world", faults=[echo]) as world:
        # ... and Resource Manager quoting it in a 409 (not retried by the SDK: the step fails, transient).
        world.arm.config.faults.append(
            Fault(match="PUT /subscriptions", status=409, code="Conflict", message=f"conflict {SP_SECRET}")
        )
        first = run_once(world, extra_env={"ARCBAKE_TIME_SCALE": "0.05"})
        assert first.returncode == 0, first.stderr[-3000:]
        assert "***" in first.stderr  # the echoed secret was there, and redacted
        outputs = [first.stdout, first.stderr]
        base = ["--root", str(world.root)]
        for argv in (
            ["status", *base, "--format", "json"],
            ["doctor", *base, "--source", f"file:{world.meta}", "-v"],
        ):
            proc = subprocess.run(
                [world.argv()[0], *argv], env=world.env, capture_output=True, text=True, timeout=120
            )
            outputs += [proc.stdout, proc.stderr]
        assert json.loads(outputs[2])["state"] == "done"
        requests = json.dumps(world.kube.store.requests)
        azure = json.dumps(world.arm.state.resources)
        az_log = (world.workdir / "az" / "az-argv.log").read_text()
        systemctl_log = (world.workdir / "systemctl.log").read_text()

    (secrets_file,) = world.root.glob("var/lib/arcbake/instances/*/secrets.json")
    for secret in (SP_SECRET, GIT_SECRET):
        for text in outputs:
            assert secret not in text
        assert secret not in az_log
        assert secret not in systemctl_log
        assert secret not in requests
        assert secret not in azure  # the Git token went to the cluster's Secret, never to Azure
        assert secret not in world.meta.read_text()  # guestinfo: secrets key redacted, status clean
        # Retired from the secrets file once onboarding was done; and az's own store (the az double saves the
        # SP secret in AZURE_CONFIG_DIR/service_principal_entries.json at login, as azure-cli does) removed
        # after connect by `az logout` + the files' removal.
        holders = [p for p in world.root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert holders == []
    held = json.loads(secrets_file.read_text())
    assert held["secrets"] == {"generation": 1, "git": {}} and "sp_secret" in held["retired"]
    meta = json.loads(world.meta.read_text())
    assert meta["guestinfo.arcbake.secrets"] == "---"
    assert json.loads(meta["guestinfo.arcbake.status"])["state"] == "done"
    assert len(world.az_calls("connectedk8s", "connect")) == 2  # the echoing failure, then the connect
    # Each connect was followed by a sign-out; az's credential files are gone from the guest.
    assert len(world.az_calls("login")) == len(world.az_calls("logout")) == 2
    assert [p for p in world.root.rglob("*") if p.name.startswith(azcli.CREDENTIAL_STORES)] == []
    # The Git token reached the cluster only as the local auth Secret the Flux configuration references.
    stored = world.kube.store.get("Secret", "flux-system", "cluster-config-git-auth")
    assert stored is not None and "password" in stored["data"]
