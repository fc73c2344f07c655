"""`firstboot rotate` as a program in the onboarding world: a clone onboarded with secrets generation 1
takes generation 2 (written into its guestinfo as `builder rotate` writes it), signs in with the new
service principal secret, replaces the Flux Git credentials in the cluster, reports generation 2, and
keeps neither the old nor the new values on disk; a refused generation leaves the old one in force."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from doubles.world import GIT_SECRET, SP_SECRET, World, onboarding_world, run_once

from firstboot import encoding
from firstboot.contract import ENCODING_SUFFIX, KEY_NODES_DELETE, KEY_SECRETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_SP = "rotated-sp-secret-Pq2wE7"
NEW_GIT = "rotated-git-token-Mz4yK9"


def deliver(world: World, generation: int, sp_secret: str, git_token: str) -> None:
    """What `builder rotate` does to the VM: a newer set in guestinfo.arcbake.secrets (gzip+base64)."""
    meta = json.loads(world.meta.read_text())
    secrets = {
        "generation": generation,
        "sp_secret": sp_secret,
        "git": {"cluster-config": {"https_user": "git", "https_key": git_token}},
    }
    meta[KEY_SECRETS] = encoding.encode(json.dumps(secrets), encoding.GZIP_BASE64)
    meta[KEY_SECRETS + ENCODING_SUFFIX] = encoding.GZIP_BASE64
    world.meta.write_text(json.dumps(meta))


def azure_rotates_to(world: World, secret: str) -> None:
    """The service principal's secret as Azure (Entra ID: the ARM double; and the az double) now accepts."""
    path = world.workdir / "az" / "az-double.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "secret": secret}))
    world.arm.config.principals = dict.fromkeys(world.arm.config.principals, secret)


def sign_ins(world: World) -> list[int]:
    """The status of every token request Entra ID (the ARM double) answered."""
    return [r.status for r in world.arm.requests() if r.path.endswith("/oauth2/v2.0/token")]


def rotate(world: World) -> subprocess.CompletedProcess[str]:
    argv = [world.argv()[0], "rotate", "--root", str(world.root), "--source", f"file:{world.meta}", "-v"]
    return subprocess.run(argv, env=world.env, capture_output=True, text=True, timeout=120)


def git_password(world: World) -> str:
    stored = world.kube.store.get("Secret", "flux-system", "cluster-config-git-auth")
    assert stored is not None
    return base64.b64decode(stored["data"]["password"]).decode()


def on_disk(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.allow_subp(all=True)
def test_rotation_to_generation_two(preflight_world: Any, guest_root: Path, tmp_path: Path) -> None:
    with onboarding_world(preflight_world, guest_root, tmp_path / "world") as world:
        first = run_once(world, extra_env={"ARCBAKE_TIME_SCALE": "0.05"})
        assert first.returncode == 0, first.stderr[-3000:]
        assert world.status()["generation"] == 1
        assert git_password(world) == GIT_SECRET
        logins_before = len(world.az_calls("login"))
        tokens_before = len(sign_ins(world))

        # Nothing newer in guestinfo: nothing happens.
        idle = rotate(world)
        assert idle.returncode == 0, idle.stderr[-2000:]
        assert "no newer secrets (generation 1 held)" in idle.stdout
        assert len(sign_ins(world)) == tokens_before

        azure_rotates_to(world, NEW_SP)
        deliver(world, 2, NEW_SP, NEW_GIT)
        # builder rollout asks for the Nodes of VMs it replaces (one registered, one already gone).
        world.kube.store.put("Node", "", "old-agent", {"name": "old-agent", "ready_after": 0})
        meta = json.loads(world.meta.read_text())
        world.meta.write_text(json.dumps({**meta, KEY_NODES_DELETE: "0f1e2d3c4b5a6978:old-agent,gone-agent"}))
        taken = rotate(world)
        assert taken.returncode == 0, taken.stderr[-3000:]
        assert "secrets generation 2 in use" in taken.stdout
        # Entra ID accepts only the new secret now: this sign-in (the SDK's, no az process) used it.
        assert sign_ins(world)[tokens_before:] == [200]
        assert len(world.az_calls("login")) == logins_before
        assert git_password(world) == NEW_GIT
        status = world.status()
        meta = json.loads(world.meta.read_text())
        guest_status = json.loads(meta["guestinfo.arcbake.status"])
        outputs = taken.stdout + taken.stderr + idle.stdout + idle.stderr

    assert status["generation"] == 2 and status["state"] == "done"
    # Each run also refreshes the server's view of its Ready nodes (what builder rollout waits for).
    assert status["nodes_ready"] == [world.config["hostname"]]
    # ... and deletes the Nodes builder rollout named (K3s's node-password rule), clearing the request.
    assert status["nodes_deleted"] == ["old-agent", "gone-agent"]
    assert status["nodes_delete_id"] == "0f1e2d3c4b5a6978"  # what rollout waits for
    assert world.kube.store.get("Node", "", "old-agent") is None
    assert meta[KEY_NODES_DELETE] == "---"
    assert guest_status["generation"] == 2
    assert meta[KEY_SECRETS] == "---"
    for secret in (SP_SECRET, GIT_SECRET, NEW_SP, NEW_GIT):
        assert on_disk(world.root, secret) == [], secret  # old values discarded, new ones retired
        assert secret not in outputs
    (held,) = world.root.glob("var/lib/arcbake/instances/*/secrets.json")
    assert json.loads(held.read_text())["secrets"]["generation"] == 2


@pytest.mark.allow_subp(all=True)
def test_refused_generation_keeps_the_old_one(preflight_world: Any, guest_root: Path, tmp_path: Path) -> None:
    with onboarding_world(preflight_world, guest_root, tmp_path / "world") as world:
        first = run_once(world, extra_env={"ARCBAKE_TIME_SCALE": "0.05"})
        assert first.returncode == 0, first.stderr[-3000:]
        # Azure was not told about this secret: the sign-in is refused.
        deliver(world, 2, "never-registered-secret", NEW_GIT)
        refused = rotate(world)
        assert refused.returncode == 1
        assert "secrets generation 2 refused" in refused.stdout and "AADSTS7000215" in refused.stdout
        status = world.status()
        assert git_password(world) == GIT_SECRET
        # A replay of generation 1 afterwards changes nothing either.
        deliver(world, 1, NEW_SP, NEW_GIT)
        replay = rotate(world)
        assert replay.returncode == 0 and "no newer secrets (generation 1 held)" in replay.stdout

    assert status["state"] == "failed" and status["step"] == "rotate" and status["generation"] == 1
    assert "never-registered-secret" not in refused.stdout + refused.stderr
    assert on_disk(world.root, "never-registered-secret") == []
