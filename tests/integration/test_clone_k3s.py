"""Every clone of an example fleet deployed to the simulator runs a K3s configuration K3s accepts for its
role: what deploy wrote (decoded as cloud-init does) goes through firstboot's k3s step onto the baked
rootfs of the demo image, and the systemctl/K3s double starts each node (config.yaml + config.yaml.d
merged as K3s does, the role's flag table, one join token per cluster, a joining server only into an
etcd cluster). Initialising servers start first, then joining servers, then agents."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from doubles import k3s_rules
from doubles.harness import doubles_path, make_ctx
from fixtures.vcsim import VcsimHandle

from builder.cli import cli
from builder.fleet import FleetVM, load_fleet
from builder.render import render
from builder.spec import load_spec
from firstboot.contract import OnboardingConfig, OnboardingSecrets, Role
from firstboot.steps import k3s
from integration.vsphere_helpers import REPO, SECRET_ENV, cloudinit_decode, fleet_file, vm_extra

pytestmark = [pytest.mark.integration, pytest.mark.allow_subp("systemctl")]


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("render") / "build"
    render(load_spec(REPO / "examples/demo-image.yaml"), out, packer=(1, 6, 6))
    return out / "rootfs"


def address(vm: FleetVM) -> str:
    """What other nodes' `server:` URLs name this VM by (fleet.server_url)."""
    if vm.network.address is not None:
        return str(vm.network.address.ip)
    return f"{vm.hostname}.{vm.config.domain}" if vm.config.domain else vm.hostname


def start(tmp: Path, vm: FleetVM, root: Path, role: str) -> str:
    env = {
        **os.environ,
        "PATH": doubles_path(),
        "SYSTEMCTL_DOUBLE_ROOT": str(root),
        "SYSTEMCTL_DOUBLE_STATE": str(tmp / f"{vm.name}.json"),
        "SYSTEMCTL_DOUBLE_CLUSTER": str(tmp / "cluster.json"),
        "SYSTEMCTL_DOUBLE_ADDRESS": address(vm),
        "SYSTEMCTL_DOUBLE_JOURNAL": str(tmp / "journal.jsonl"),
    }
    unit = "k3s" if role == "server" else "k3s-agent"
    subprocess.run(["systemctl", "enable", "--now", "--no-block", f"{unit}.service"], env=env, check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    state: dict[str, str] = json.loads((tmp / f"{vm.name}.json").read_text())
    return state[unit]


@pytest.mark.parametrize(("example", "etcd_clusters"), [("demo-fleet", 0), ("ha-fleet", 1)])
def test_every_clone_runs_a_k3s_config_k3s_accepts(
    vcsim: VcsimHandle, tmp_path: Path, baked: Path, example: str, etcd_clusters: int
) -> None:
    path = fleet_file(tmp_path, f"k3s-{example[:4]}", source=example)
    result = CliRunner().invoke(cli, ["deploy", str(path)], env={**vcsim.env(), **SECRET_ENV})
    assert result.exit_code == 0, result.output
    fleet = load_fleet(path)

    def order(vm: FleetVM) -> int:
        return 2 if vm.role is Role.AGENT else (1 if vm.config.k3s.server_url else 0)

    tokens, states, init, cluster_init = set(), {}, [], []
    double = tmp_path / "double"
    double.mkdir()
    for vm in sorted(fleet.vms, key=order):
        decoded = cloudinit_decode(vm_extra(vcsim, vm.name))
        config = OnboardingConfig.model_validate_json(decoded["config"])
        secrets = OnboardingSecrets.model_validate_json(decoded["secrets"])
        root = tmp_path / vm.name
        shutil.copytree(baked, root)
        k3s._write_config(make_ctx(root, config, secrets), config)
        role = config.k3s.role.value
        node, token = k3s_rules.check_node(root, role)
        tokens.add(token)
        if role == "server" and not node.get("server"):
            init.append(vm.name)
        if node.flag("cluster-init"):
            cluster_init.append(vm.name)
        states[vm.name] = start(double, vm, root, role)
    assert tokens == {SECRET_ENV["K3S_TOKEN"]}
    journal = double / "journal.jsonl"
    assert not journal.exists(), journal.read_text()
    assert set(states.values()) == {"active"}
    registry: dict[str, Any] = json.loads((double / "cluster.json").read_text())
    clusters = {a: e for a, e in registry.items() if "alias_of" not in e}
    # One cluster per initialising server, every clone a member of one; exactly one cluster-init server
    # per HA cluster (etcd), none in a one-server cluster.
    assert len(clusters) == len(init)
    assert len(cluster_init) == etcd_clusters == sum(1 for e in clusters.values() if e["etcd"])
    for entry in clusters.values():
        servers = [m for m in entry["members"] if m["role"] == "server"]
        assert entry["etcd"] == (len(servers) > 1)
    assert sum(len(e["members"]) for e in clusters.values()) == len(fleet.vms)
