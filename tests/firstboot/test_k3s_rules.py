"""The K3s double's rules: config merge as pkg/configfilearg, flag tables per role, the shared join token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from doubles import k3s_rules
from doubles.harness import doubles_path

pytestmark = pytest.mark.allow_subp("systemctl")


def plant(root: Path, base: str | None, **dropins: str) -> Path:
    conf = root / k3s_rules.CONFIG
    conf.parent.mkdir(parents=True, exist_ok=True)
    if base is not None:
        conf.write_text(base)
    for name, text in dropins.items():
        d = conf.parent / "config.yaml.d"
        d.mkdir(exist_ok=True)
        (d / name.replace("_", ".")).write_text(text)
    return root


def test_dropins_override_and_append_in_name_order(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        "node-label: [a=1]\nselinux: true\nnode-name: baked\n",
        **{
            "50-x_yaml": "node-name: fifty\nnode-label+: [b=2]\n",
            "10-y_yml": "node-name: ten\n",
            "60-z_txt": "not-a-flag: ignored\n",
        },
    )
    assert k3s_rules.merged_args(root) == [
        ("node-label", "a=1"),
        ("node-label", "b=2"),
        ("selinux", "true"),
        ("node-name", "fifty"),
    ]


@pytest.mark.parametrize(
    ("role", "config", "refusal"),
    [
        ("agent", "write-kubeconfig-mode: '0600'\n", "flag provided but not defined: -write-kubeconfig-mode"),
        ("agent", "cluster-cidr: 10.42.0.0/16\n", "flag provided but not defined: -cluster-cidr"),
        ("agent", "disable: [traefik]\n", "flag provided but not defined: -disable"),
        ("agent", "cluster-init: true\n", "flag provided but not defined: -cluster-init"),
        ("agent", "selinux: maybe\n", 'invalid boolean value "maybe" for -selinux'),
        ("server", "https-listen-port: many\n", 'invalid value "many" for flag -https-listen-port'),
        ("agent", "server: https://10.0.0.1:6443\n", "--token is required"),
        ("agent", "token-file: /t\n", "--server is required"),
        ("server", "server: https://10.0.0.1:6443\n", "--token is required to join"),
    ],
)
def test_refusals(tmp_path: Path, role: str, config: str, refusal: str) -> None:
    (tmp_path / "t").write_text("tok\n")
    with pytest.raises(k3s_rules.K3sRefused, match=refusal.replace("(", r"\(")):
        k3s_rules.check_node(plant(tmp_path, config), role)


def test_server_drops_unknown_keys_with_a_warning(tmp_path: Path) -> None:
    node, token = k3s_rules.check_node(plant(tmp_path, "frobnicate: 1\ncluster-init: true\n"), "server")
    assert node.flag("cluster-init") and token is None
    assert node.warnings == ["Unknown flag --frobnicate found in config.yaml, skipping"]


def test_token_file_is_read_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var/tok").write_text("s3cret\n")
    node, token = k3s_rules.check_node(
        plant(tmp_path, "server: https://10.0.0.1:6443\ntoken-file: /var/tok\nt: ignored\n"), "agent"
    )
    assert token == "s3cret" and node.get("server") == "https://10.0.0.1:6443"
    assert node.get("token") == "ignored"  # `t` is an alias of token; token-file wins


def start(tmp: Path, name: str, unit: str, config: str, token: str | None) -> dict[str, str]:
    """`systemctl enable --now --no-block UNIT` for a node `name` whose root holds `config` and token."""
    root = tmp / name
    plant(root, config)
    if token is not None:
        (root / "tok").write_text(token + "\n")
    env = {
        **os.environ,
        "PATH": doubles_path(),
        "SYSTEMCTL_DOUBLE_ROOT": str(root),
        "SYSTEMCTL_DOUBLE_STATE": str(tmp / f"{name}.json"),
        "SYSTEMCTL_DOUBLE_CLUSTER": str(tmp / "cluster.json"),
        "SYSTEMCTL_DOUBLE_ADDRESS": name,
        "SYSTEMCTL_DOUBLE_JOURNAL": str(tmp / "journal.jsonl"),
    }
    proc = subprocess.run(
        ["systemctl", "enable", "--now", "--no-block", f"{unit}.service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr  # queued: systemd reports the failure in the unit, not here
    state: dict[str, str] = json.loads((tmp / f"{name}.json").read_text())
    return state


def journal(tmp: Path) -> list[str]:
    path = tmp / "journal.jsonl"
    return [json.loads(line)["message"] for line in path.read_text().splitlines()] if path.exists() else []


def test_joiners_need_the_initialising_servers_token(tmp_path: Path) -> None:
    init, join = "cluster-init: true\ntoken-file: /tok\n", "server: https://10.0.0.1:6443\ntoken-file: /tok\n"
    assert start(tmp_path, "10.0.0.1", "k3s", init, "T1")["k3s"] == "active"
    assert start(tmp_path, "10.0.0.2", "k3s", join, "T1")["k3s"] == "active"
    assert start(tmp_path, "10.0.0.3", "k3s-agent", join, "T1")["k3s-agent"] == "active"
    assert start(tmp_path, "10.0.0.4", "k3s-agent", join, "other")["k3s-agent"] == "failed"
    assert "token CA hash does not match" in journal(tmp_path)[-1]
    cluster = json.loads((tmp_path / "cluster.json").read_text())
    assert [m["address"] for m in cluster["10.0.0.1"]["members"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_a_server_does_not_join_a_server_without_etcd(tmp_path: Path) -> None:
    assert start(tmp_path, "10.0.0.1", "k3s", "token-file: /tok\n", "T1")["k3s"] == "active"
    join = "server: https://10.0.0.1:6443\ntoken-file: /tok\n"
    assert start(tmp_path, "10.0.0.2", "k3s-agent", join, "T1")["k3s-agent"] == "active"
    assert start(tmp_path, "10.0.0.3", "k3s", join, "T1")["k3s"] == "failed"
    assert "without embedded etcd" in journal(tmp_path)[-1]


def test_an_agent_with_a_server_key_never_starts(tmp_path: Path) -> None:
    assert start(tmp_path, "10.0.0.1", "k3s", "token-file: /tok\n", "T1")["k3s"] == "active"
    agent = "server: https://10.0.0.1:6443\ntoken-file: /tok\nwrite-kubeconfig-mode: '0600'\n"
    assert start(tmp_path, "10.0.0.2", "k3s-agent", agent, "T1")["k3s-agent"] == "failed"
    assert journal(tmp_path) == ["Incorrect Usage. flag provided but not defined: -write-kubeconfig-mode"]


def test_a_node_name_held_with_another_password_is_refused_until_the_node_is_deleted(tmp_path: Path) -> None:
    # K3s's node-password rule (k3s_rules.admit_node, cited there): a replacement machine joining under
    # the old node's name presents a new /etc/rancher/node/password.
    init, join = "cluster-init: true\ntoken-file: /tok\n", "server: https://10.0.0.1:6443\ntoken-file: /tok\n"
    assert start(tmp_path, "10.0.0.1", "k3s", init, "T1")["k3s"] == "active"
    assert start(tmp_path, "10.0.0.2", "k3s-agent", join, "T1")["k3s-agent"] == "active"
    old = (tmp_path / "10.0.0.2" / k3s_rules.NODE_PASSWORD_FILE).read_text()
    shutil.move(tmp_path / "10.0.0.2", tmp_path / "old")
    (tmp_path / "10.0.0.2.json").unlink()
    assert start(tmp_path, "10.0.0.2", "k3s-agent", join, "T1")["k3s-agent"] == "failed"
    assert "Node password rejected, duplicate hostname" in journal(tmp_path)[-1]
    assert (tmp_path / "10.0.0.2" / k3s_rules.NODE_PASSWORD_FILE).read_text() != old
    # `kubectl delete node 10.0.0.2` frees the name; the same machine rejoining is never refused.
    cluster = json.loads((tmp_path / "cluster.json").read_text())
    k3s_rules.delete_node(cluster["10.0.0.1"]["passwords"], "10.0.0.2")
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    (tmp_path / "10.0.0.2.json").unlink()
    assert start(tmp_path, "10.0.0.2", "k3s-agent", join, "T1")["k3s-agent"] == "active"
    (tmp_path / "10.0.0.2.json").unlink()
    assert start(tmp_path, "10.0.0.2", "k3s-agent", join, "T1")["k3s-agent"] == "active"


def test_a_cluster_init_server_without_data_beside_live_members_is_refused(tmp_path: Path) -> None:
    # k3s_rules.etcd_start (k3s-io/k3s pkg/etcd/etcd.go Start, cited there): no etcd data and no --server
    # is a NEW cluster; beside live members of its cluster that is a split brain.
    init, join = "cluster-init: true\ntoken-file: /tok\n", "server: https://10.0.0.1:6443\ntoken-file: /tok\n"
    assert start(tmp_path, "10.0.0.1", "k3s", init, "T1")["k3s"] == "active"
    assert (tmp_path / "10.0.0.1" / k3s_rules.ETCD_DATA_DIR).is_dir()
    assert start(tmp_path, "10.0.0.2", "k3s", join, "T1")["k3s"] == "active"
    # A restart of the same machine (its etcd data kept) is the member it was.
    (tmp_path / "10.0.0.1.json").unlink()
    assert start(tmp_path, "10.0.0.1", "k3s", init, "T1")["k3s"] == "active"
    # A new machine at that address with the first server's config: refused, the cluster kept.
    shutil.move(tmp_path / "10.0.0.1", tmp_path / "old")
    (tmp_path / "10.0.0.1.json").unlink()
    assert start(tmp_path, "10.0.0.1", "k3s", init, "T1")["k3s"] == "failed"
    assert "starts a NEW etcd cluster while this cluster's members 10.0.0.2 are up" in journal(tmp_path)[-1]
    cluster = json.loads((tmp_path / "cluster.json").read_text())
    assert [m["address"] for m in cluster["10.0.0.1"]["members"]] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize(
    ("cluster_init", "server", "initialized", "live", "expected"),
    [
        (True, None, True, ["s2"], "member"),
        (True, None, False, [], "new"),
        (False, "https://s2:6443", False, ["s2"], "join"),
        (False, None, False, ["s2"], "new"),
    ],
)
def test_etcd_start(
    cluster_init: bool, server: str | None, initialized: bool, live: list[str], expected: str
) -> None:
    assert (
        k3s_rules.etcd_start(
            cluster_init=cluster_init, server=server, initialized=initialized, live_members=live
        )
        == expected
    )
