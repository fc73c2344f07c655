"""Fleet file validation: every error at once with path and line; merge rules; derived payloads."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from builder import fleet as fleet_module
from builder.fleet import FleetError, load_fleet, resolve_secrets, secrets_json
from builder.template_names import newest_match
from firstboot.located_yaml import Issue

REPO = Path(__file__).resolve().parents[2]

BASE = """\
template: tpl-{timestamp}
vsphere: {datacenter: DC0, cluster: C0}
defaults:
  time: {ntp_servers: [ntp.example]}
  arc: {resource_group: rg, location: westeurope, subscription_id: 00000000-0000-4000-8000-000000000001,
        tenant_id: 00000000-0000-4000-8000-000000000002, client_id: 00000000-0000-4000-8000-000000000003}
  secrets: {sp_secret: {env: SP}, k3s_token: {env: TOKEN}}
vms:
"""


def write(tmp_path: Path, vms: str, base: str = BASE) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(base + textwrap.dedent(vms))
    return path


def issues(path: Path) -> list[str]:
    with pytest.raises(FleetError) as err:
        load_fleet(path)
    return [str(i) for i in err.value.issues]


def test_ha_fleet_is_one_cluster_started_by_its_first_server() -> None:
    fleet = load_fleet(REPO / "examples" / "ha-fleet.yaml")
    first, *others = fleet.vms
    assert first.config.k3s.cluster_init and first.config.onboards_cluster and first.config.arc is not None
    assert [v.config.k3s.cluster_init for v in others] == [False] * 4
    assert all(v.config.arc is None and not v.config.flux.configurations for v in others)
    assert [v.config.k3s.server_url for v in others] == ["https://192.168.60.11:6443"] * 3 + [
        "https://192.168.60.12:6443"
    ]
    assert {v.secret_refs.k3s_token for v in fleet.vms} == {first.secret_refs.k3s_token}
    secrets = resolve_secrets(fleet, {"ARC_SP_SECRET": "sp", "K3S_TOKEN": "tok"})
    # Only the server that onboards the cluster receives Azure material.
    assert [s.sp_secret is not None for s in secrets.values()] == [True, False, False, False, False]
    assert {s.k3s_token.get_secret_value() for s in secrets.values() if s.k3s_token} == {"tok"}
    # Joining servers do not onboard; the rollout replacement of the first one (it joins, with the
    # cluster's arc) does, so Arc, Flux and rotate stay with one server per cluster.
    assert [v.config.onboards_cluster for v in others] == [False] * 4
    k3s = first.config.k3s.model_copy(
        update={"cluster_init": False, "server_url": "https://192.168.60.12:6443"}
    )
    assert first.config.model_copy(update={"k3s": k3s}).onboards_cluster


def test_even_etcd_servers_when_allowed(tmp_path: Path) -> None:
    base = BASE.replace("vms:\n", "allow_even_etcd_servers: true\nvms:\n")
    fleet = load_fleet(write(tmp_path, "  - {name: s1}\n  - {name: s2, server: s1}\n", base))
    assert [v.config.k3s.cluster_init for v in fleet.vms] == [True, False]


def test_demo_fleet_is_valid() -> None:
    fleet = load_fleet(REPO / "examples" / "demo-fleet.yaml")
    assert [v.role.value for v in fleet.vms] == ["server", "agent", "agent"]
    assert fleet.vms[1].config.k3s.server_url == "https://192.168.50.11:6443"


@pytest.mark.parametrize(
    ("vms", "expected"),
    [
        ("  - {name: a, network: {address: 10.0.0.5}}\n", ["fleet.yaml:9: vms.0.network.address: "]),
        (
            "  - {name: a, secrets: {k3s_token: plain-text}}\n",
            ["vms.0.secrets.k3s_token: ", "never the secret value"],
        ),
        (
            "  - {name: a, role: agent}\n",
            ["vms.0.server: an agent needs `server:` (the fleet has 0 clusters)"],
        ),
        ("  - {name: a}\n  - {name: a}\n", ["fleet.yaml:10: vms.1.name: duplicate VM name"]),
        ("  - {name: a}\n  - {name: b, role: agent, server: c}\n", ["vms.1.server: no VM named 'c'"]),
        ("  - {name: a, arc: {location: West Europe}}\n", ["vms.0.arc.location: "]),
        ("  - {name: a, colour: red}\n", ["vms.0.colour: unknown key"]),
        # Clusters (issue 9): etcd quorum, who joins whom, one token per cluster.
        (
            "  - {name: s1}\n  - {name: s2, server: s1}\n  - {name: a, role: agent}\n",
            [
                "fleet.yaml:9: vms.0",
                "cluster of s1: 2 servers + 1 agent: etcd needs an odd number of servers",
                "allow_even_etcd_servers: true",
            ],
        ),
        (
            "  - {name: s1}\n  - {name: s2, server: s1}\n  - {name: s3, server: s2}\n",
            ["vms.2.server: a server joins the first server of its cluster ('s2' joins 's1': name 's1')"],
        ),
        ("  - {name: s1}\n  - {name: s2}\n  - {name: a, role: agent}\n", ["(the fleet has 2 clusters)"]),
        ("  - {name: s1, server: s1}\n", ["vms.0.server: a server does not join itself"]),
        (
            "  - {name: s1}\n  - {name: a, role: agent, secrets: {k3s_token: {env: OTHER}}}\n",
            ["vms.1.secrets.k3s_token: differs from the token of 's1', the server that starts its cluster"],
        ),
        (
            "  - {name: s1, secrets: {k3s_token: null}}\n"
            "  - {name: s2, server: s1, secrets: {k3s_token: null}}\n  - {name: s3, server: s1}\n",
            ["secrets: cluster of s1: 3 servers + 0 agents needs secrets.k3s_token"],
        ),
        ("  - {name: a, network: {dhcp: true, address: 10.0.0.5/24}}\n", ["vms.0.network: ", "not both"]),
        (
            "  - {name: a, network: {address: 10.0.0.5/24, gateway: 10.1.0.1}}\n",
            ["vms.0.network: ", "gateway 10.1.0.1 is outside 10.0.0.0/24"],
        ),
    ],
)
def test_invalid_fleets(tmp_path: Path, vms: str, expected: list[str]) -> None:
    found = "\n".join(issues(write(tmp_path, vms)))
    for part in expected:
        assert part in found


# Issue 8: hostile or unlucky fleet values, each refused with its key path (as written) and a reason.
HOSTILE = [
    (
        "proxy-injection",
        "{name: a, proxy: {http_proxy: \"http://p:3128';touch${IFS}/tmp/x;'\"}}",
        "vms.0.proxy.http_proxy",
        "must be http(s)://host[:port]",
    ),
    (
        "no-proxy-newline",
        '{name: a, proxy: {http_proxy: "http://p:3128", no_proxy: ["a\\nb"]}}',
        "vms.0.proxy.no_proxy.0",
        "must be a host, .domain",
    ),
    (
        "tag-option",
        "{name: a, tags: {--kube-config: x}}",
        "vms.0.tags.--kube-config",
        "not starting with '-'",
    ),
    ("tag-value-control", '{name: a, tags: {k: "a\\x07b"}}', "vms.0.tags.k", "no control characters"),
    (
        "ntp-option",
        "{name: a, time: {ntp_servers: [--help]}}",
        "vms.0.time.ntp_servers.0",
        "not starting with '-'",
    ),
    ("k3s-null", "{name: a, k3s: null}", "vms.0.k3s", "must be a mapping (YAML read null)"),
    ("network-null", "{name: a, network: null}", "vms.0.network", "must be a mapping (YAML read null)"),
    ("role-null", "{name: a, role: null}", "vms.0.role", "'server' or 'agent'"),
    ("dhcp-string", "{name: a, network: {dhcp: 'yes'}}", "vms.0.network.dhcp", "valid boolean"),
    (
        "timeout-bool",
        "{name: a, k3s: {ready_timeout_seconds: true}}",
        "vms.0.k3s.ready_timeout_seconds",
        "valid integer",
    ),
    ("label-key", "{name: a, k3s: {node_labels: {'-x': y}}}", "vms.0.k3s.node_labels.-x", "should match"),
    (
        "flux-branch-option",
        "{name: a, flux: {configurations: [{name: c, url: 'https://g/x', branch: --upload-pack=x,"
        " kustomizations: [{name: k}]}]}}",
        "vms.0.flux.configurations.0.branch",
        "not starting with '-'",
    ),
    (
        "unknown-in-k3s",
        "{name: a, k3s: {role: agent}}",
        "vms.0.k3s.role",
        "unknown key (allowed: cluster_cidr, service_cidr, cluster_dns, node_labels, ready_timeout_seconds)",
    ),
]


@pytest.mark.fault(
    "fleet value a shell, systemd, az or kickstart would interpret (quote, newline, leading '-', null)",
    "exit 3: one line with file, line and key path as written, nothing deployed",
)
@pytest.mark.parametrize(("vm", "path", "fragment"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_values_are_refused(tmp_path: Path, vm: str, path: str, fragment: str) -> None:
    found = [i for i in _issue_objects(write(tmp_path, f"  - {vm}\n")) if i.path == path]
    assert found, path
    assert fragment in found[0].message
    assert found[0].line == 9


def _issue_objects(path: Path) -> list[Issue]:
    with pytest.raises(FleetError) as err:
        load_fleet(path)
    return err.value.issues


def test_errors_are_located_where_written(tmp_path: Path) -> None:
    # A problem in `defaults` is reported once, at its line in defaults, whatever the VMs say.
    base = BASE.replace(
        "  time: {ntp_servers: [ntp.example]}", "  time: {ntp_servers: [ntp.example], bogus: 1}"
    )
    found = [str(i) for i in _issue_objects(write(tmp_path, "  - {name: a}\n  - {name: b}\n", base))]
    assert found == [
        f"{tmp_path / 'fleet.yaml'}:4: defaults.time.bogus: unknown key "
        "(allowed: ntp_servers, ntp_port, max_offset_seconds, sync_timeout_seconds)"
    ]
    # The unknown-key list is the fleet's own, never the image spec's.
    placement = _issue_objects(
        write(tmp_path, "  - {name: a}\n", BASE.replace("cluster: C0}", "cluster: C0, x: 1}"))
    )
    assert [i.message for i in placement] == [
        "unknown key (allowed: datacenter, cluster, host, resource_pool, datastore, network, folder)"
    ]


def test_every_error_at_once_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path, "  - {name: a, colour: red}\n  - {name: 'b c'}\n  - {name: d, role: agent, server: a2}\n"
    )
    found = issues(path)
    assert any(i.startswith(f"{path}:9: vms.0.colour") for i in found)
    assert any(i.startswith(f"{path}:10: vms.1.name") for i in found)
    assert len(found) == 2  # schema errors first; cross checks run once the schema is valid


def test_server_missing_arc_and_secret(tmp_path: Path) -> None:
    base = "template: t\nvsphere: {datacenter: DC0, host: h1}\ndefaults: {time: {ntp_servers: [n]}}\nvms:\n"
    found = "\n".join(issues(write(tmp_path, "  - {name: s1}\n", base)))
    assert "vms.0.arc: a server needs arc.resource_group, arc.location" in found


def test_merge_rules_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vms = """\
      - name: s1
        tags: {site: one}
        arc: {cluster_name: c1}
        network: {address: 10.0.0.5/24, gateway: 10.0.0.1}
      - {name: a1, role: agent}
    """
    base = BASE.replace("  secrets:", "  tags: {env: prod}\n  secrets:")
    fleet = load_fleet(write(tmp_path, vms, base))
    server, agent = fleet.vms
    assert server.config.arc is not None
    assert server.config.arc.tags == {"env": "prod", "site": "one"}
    assert server.config.arc.resource_group == "rg" and server.config.arc.cluster_name == "c1"
    assert agent.config.k3s.server_url == "https://10.0.0.5:6443"
    with pytest.raises(FleetError) as err:
        resolve_secrets(fleet, {"TOKEN": "t0ken-value"})
    assert "environment variable SP is not set" in str(err.value)
    resolved = resolve_secrets(fleet, {"TOKEN": "t0ken-value", "SP": "sp-value"})
    assert '"sp_secret": "sp-value"' in secrets_json(resolved["s1"])
    assert "sp-value" not in secrets_json(resolved["a1"])
    # identity ignores secret values but not the rest of the configuration
    assert server.identity("t", fleet.placement) == load_fleet(write(tmp_path, vms, base)).vms[0].identity(
        "t", fleet.placement
    )
    assert server.identity("t", fleet.placement) != server.identity("t2", fleet.placement)


def test_newest_template_match() -> None:
    names = ["tpl-202601010000", "tpl-202612312359", "tpl-2026", "other-202701010000"]
    assert newest_match("tpl-{timestamp}", names) == "tpl-202612312359"
    assert newest_match("tpl-2026", names) == "tpl-2026"
    assert newest_match("nope-{date}", names) is None


# Issue 8: secret references that would copy builder's own credentials or read without bound.
REFUSED_REFS = [
    ("vsphere-password", "{env: VSPHERE_PASSWORD}", "builder's own environment"),
    ("packer-variable", "{env: PKR_VAR_rhsm_org}", "builder's own environment"),
    ("arcbake-setting", "{env: arcbake_ssh_key_file}", "builder's own environment"),
    ("proc-environ", "{file: /proc/self/environ}", "paths under /proc, /sys and /dev are refused"),
    ("dev-zero", "{file: /dev/zero}", "paths under /proc, /sys and /dev are refused"),
    ("dev-dotdot", "{file: /tmp/../dev/zero}", "paths under /proc, /sys and /dev are refused"),
]


@pytest.mark.fault(
    "secret reference to builder's own environment (VSPHERE_*, PKR_VAR_*, ARCBAKE_*) or /proc, /sys, /dev",
    "refused at validation, exit 3, located at the reference",
)
@pytest.mark.parametrize(("ref", "fragment"), [r[1:] for r in REFUSED_REFS], ids=[r[0] for r in REFUSED_REFS])
def test_secret_references_refused_at_validation(tmp_path: Path, ref: str, fragment: str) -> None:
    found = _issue_objects(write(tmp_path, f"  - {{name: a, secrets: {{k3s_token: {ref}}}}}\n"))
    kind = "env" if ref.startswith("{env") else "file"
    assert [(i.path, i.line) for i in found] == [(f"vms.0.secrets.k3s_token.{kind}", 9)]
    assert fragment in found[0].message


def _resolve_problem(tmp_path: Path, make: str) -> str:
    """Make `tok` in tmp_path as `make` says; the problem resolve_secrets reports for {file: tok}."""
    target = tmp_path / "tok"
    if make == "fifo":
        os.mkfifo(target)
    elif make == "symlink-to-proc":
        target.symlink_to("/proc/self/environ")
    elif make == "symlink-to-dev":
        target.symlink_to("/dev/zero")
    elif make == "too-large":
        target.write_text("x" * (64 * 1024 + 1))
    elif make == "empty":
        target.write_text("\n")
    elif make == "directory":
        target.mkdir()
    fleet = load_fleet(write(tmp_path, "  - {name: a, secrets: {k3s_token: {file: tok}}}\n"))
    with pytest.raises(FleetError) as err:
        resolve_secrets(fleet, {"SP": "sp"})
    assert [(i.path, i.line) for i in err.value.issues] == [("vms.0.secrets.k3s_token", 9)]
    return err.value.issues[0].message


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        ("fifo", "not a regular file"),
        ("symlink-to-proc", "is on a pseudo file system"),
        ("symlink-to-dev", "not a regular file"),
        ("too-large", "larger than the 64 KiB limit"),
        ("empty", "is empty"),
        ("directory", "not a regular file"),
        ("missing", "No such file or directory"),
    ],
)
@pytest.mark.fault(
    "secret file that is a FIFO, a symlink into /proc or /dev, over 64 KiB, empty or a directory",
    "exit 3 naming the reference and why, never blocking or reading without bound",
)
def test_secret_files_are_bounded_regular_files(tmp_path: Path, make: str, fragment: str) -> None:
    message = _resolve_problem(tmp_path, make)
    assert message.startswith("file tok")
    assert fragment in message


def test_secret_file_through_a_symlink_to_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("t0ken\n")
    (tmp_path / "tok").symlink_to(tmp_path / "real")
    fleet = load_fleet(write(tmp_path, "  - {name: a, secrets: {k3s_token: {file: tok}}}\n"))
    resolved = resolve_secrets(fleet, {"SP": "sp"})["a"]
    assert resolved.k3s_token is not None and resolved.k3s_token.get_secret_value() == "t0ken"


def test_no_proxy_carries_the_node_network_nodes_and_server() -> None:
    # Agents reach https://<server>:6443 and their peers directly: with a proxy configured, NO_PROXY
    # (k3s-agent.service.env, profile.d, every child of firstboot) must carry them (firstboot.proxyenv).
    from firstboot import proxyenv
    from firstboot.contract import ProxyConfig

    fleet = load_fleet(Path(__file__).resolve().parents[2] / "examples/demo-fleet.yaml")
    proxy = ProxyConfig(https_proxy="http://proxy.example.internal:3128")
    for vm in fleet.vms:
        no_proxy = proxyenv.no_proxy_list(proxy, vm.config.k3s)
        assert {"192.168.50.0/24", "192.168.50.11", "192.168.50.12"} <= set(no_proxy), (vm.name, no_proxy)
        if vm.role.value == "agent":
            assert "192.168.50.11" in proxyenv.proxy_environment(proxy, vm.config.k3s)["NO_PROXY"].split(",")


def test_unset_reference_in_defaults_reported_once_at_its_line(tmp_path: Path) -> None:
    fleet = load_fleet(write(tmp_path, "  - {name: a}\n  - {name: b, role: agent, server: a}\n"))
    with pytest.raises(FleetError) as err:
        resolve_secrets(fleet, {"SP": "sp"})
    assert [str(i) for i in err.value.issues] == [
        f"{tmp_path / 'fleet.yaml'}:7: defaults.secrets.k3s_token: environment variable TOKEN is not set"
    ]


def test_cluster_addresses_are_derived_once_per_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per member they were quadratic in the cluster's size (a 1,000-VM fleet spent most of its load on it).
    calls: list[int] = []
    derive = fleet_module._cluster_addresses

    def counted(members: list[Any]) -> list[str]:
        calls.append(len(members))
        return derive(members)

    monkeypatch.setattr(fleet_module, "_cluster_addresses", counted)
    fleet = load_fleet(REPO / "examples" / "ha-fleet.yaml")
    assert calls == [len(fleet.vms)]  # one cluster: one derivation for all of its VMs
