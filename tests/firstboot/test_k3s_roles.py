"""What a clone's K3s reads (the baked config.yaml of a real render + firstboot's drop-in) passes the
K3s double's rules for its role; the join token travels by file."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from doubles import k3s_rules
from doubles.harness import K3S_TOKEN, make_config, make_ctx, make_secrets

from builder.render import render
from builder.spec import load_spec
from firstboot.steps import k3s

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rootfs of examples/rocky9.yaml as `builder render` writes it (k3s.disable: [traefik])."""
    out = tmp_path_factory.mktemp("render") / "build"
    render(load_spec(REPO / "examples/rocky9.yaml"), out, packer=(1, 6, 6))
    return out / "rootfs"


def clone(tmp_path: Path, baked: Path, k3s_section: dict[str, Any], token: str | None) -> Path:
    root = tmp_path / "root"
    shutil.copytree(baked, root)
    secrets = make_secrets(k3s_token=token) if token else make_secrets()
    ctx = make_ctx(root, make_config(k3s=k3s_section), secrets)
    k3s._write_config(ctx, ctx.require_config())
    return root


@pytest.mark.parametrize(
    ("section", "role", "present", "absent"),
    [
        ({"role": "server"}, "server", {"disable": ["traefik"], "write-kubeconfig-mode": ["0600"]}, ()),
        ({"role": "server", "cluster_init": True}, "server", {"cluster-init": ["true"]}, ("server",)),
        (
            {"role": "server", "server_url": "https://192.168.60.11:6443"},
            "server",
            {"server": ["https://192.168.60.11:6443"], "disable": ["traefik"]},
            ("cluster-init",),
        ),
        (
            {"role": "agent", "server_url": "https://192.168.50.11:6443"},
            "agent",
            {"server": ["https://192.168.50.11:6443"], "resolv-conf": ["/etc/rancher/k3s/resolv.conf"]},
            ("disable", "cluster-cidr", "write-kubeconfig-mode"),
        ),
    ],
)
def test_clone_config_is_accepted_for_its_role(
    tmp_path: Path, baked: Path, section: dict[str, Any], role: str, present: dict[str, Any], absent: Any
) -> None:
    root = clone(tmp_path, baked, section, K3S_TOKEN)
    node, token = k3s_rules.check_node(root, role)
    assert token == K3S_TOKEN
    assert node.warnings == []  # nothing for K3s to drop, either
    for key, value in present.items():
        assert node.values[key] == value
    assert not set(absent) & set(node.values)
    token_file = root / k3s.TOKEN_FILE.lstrip("/")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The token is referenced, never written into a config file K3s or a reader of /etc would show.
    assert all(K3S_TOKEN not in p.read_text() for p in k3s_rules.config_files(root))


def test_baked_config_alone_is_accepted_by_both_roles(baked: Path) -> None:
    for role in k3s_rules.ROLES:
        node = k3s_rules.check_config(baked, role)
        assert set(node.values) == {"selinux", "resolv-conf"}


def test_single_server_without_a_token_starts_and_writes_no_token_file(tmp_path: Path, baked: Path) -> None:
    root = clone(tmp_path, baked, {"role": "server"}, None)
    node, token = k3s_rules.check_node(root, "server")
    assert token is None and "token-file" not in node.values
    assert not (root / k3s.TOKEN_FILE.lstrip("/")).exists()
