"""The k3s step against the Kubernetes API double, dnsmasq as cluster DNS and a systemctl double."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from doubles.harness import (
    HOSTNAME,
    K3S_TOKEN,
    cluster_scenario,
    dnsmasq,
    doubles_path,
    kube_double,
    make_config,
    make_ctx,
    make_secrets,
    read_jsonl,
)
from doubles.kube_api import KubeServer, write_kubeconfig

from firstboot import kube
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import k3s

pytestmark = pytest.mark.allow_subp("systemctl")
# Import the generated API modules now (seconds of CPU), so the timing assertions below measure the step.
kube._import_apis()


def server_ctx(
    tmp_path: Path, server: KubeServer, cluster_dns: str, scale: float = 1.0, **env: str
) -> Context:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    source = server.write_kubeconfig(tmp_path / "k3s-double.yaml")
    base = {
        "SYSTEMCTL_DOUBLE_LOG": str(tmp_path / "systemctl.log"),
        "SYSTEMCTL_DOUBLE_STATE": str(tmp_path / "systemctl.json"),
        "SYSTEMCTL_DOUBLE_ROOT": str(root),
        "SYSTEMCTL_DOUBLE_KUBECONFIG": str(source),
        "ARCBAKE_CLUSTER_DNS": cluster_dns,
    }
    return make_ctx(root, make_config(), make_secrets(), {**base, **env}, time_scale=scale)


def test_server_starts_waits_and_fixes_kubeconfig_mode(tmp_path: Path) -> None:
    with kube_double(cluster_scenario(ready_after=1.5, coredns_after=2.5)) as server, dnsmasq() as dns:
        ctx = server_ctx(
            tmp_path, server, dns, SYSTEMCTL_DOUBLE_KUBECONFIG_MODE="644", SYSTEMCTL_DOUBLE_DELAY="0.2"
        )
        started = time.monotonic()
        k3s.run(ctx)
        elapsed = time.monotonic() - started
        requests = server.store.requests
        assert k3s.check(ctx).ok
    # Waited for CoreDNS (available 2.5 s after the double started), not a poll interval longer.
    assert 2.0 <= elapsed < 5.0
    kubeconfig = ctx.path(kube.KUBECONFIG)
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    dropin = yaml.safe_load(ctx.path(k3s.CONFIG_DROPIN).read_text())
    assert dropin["write-kubeconfig-mode"] == "0600"
    assert dropin["node-name"] == HOSTNAME
    assert dropin["cluster-dns"] == "10.43.0.10"
    argvs = [entry["argv"] for entry in read_jsonl(tmp_path / "systemctl.log")]
    assert ["enable", "--now", "--no-block", "k3s.service"] in argvs
    # The waits are watches from a listed resourceVersion, not polling loops.
    watches = [r for r in requests if r["query"].get("watch") == "true"]
    assert any(r["path"] == "/api/v1/nodes" and r["query"].get("resourceVersion") for r in watches)
    assert any(r["path"].endswith("/deployments") for r in watches)


def test_begin_starts_k3s_once_and_the_steps_run_waits_for_it(tmp_path: Path) -> None:
    """The engine calls begin before the connectivity check; run then only waits (no second systemctl),
    and a retry of run (K3s failed meanwhile) starts the unit again."""
    with kube_double(cluster_scenario(ready_after=0.3, coredns_after=0.3)) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns)

        def starts() -> list[list[str]]:
            return [e["argv"] for e in read_jsonl(tmp_path / "systemctl.log") if "enable" in e["argv"]]

        k3s.begin(ctx)
        ctx.begun.add("k3s")  # as the engine records a begin that succeeded
        assert starts() == [["enable", "--now", "--no-block", "k3s.service"]]
        assert ctx.path(k3s.CONFIG_DROPIN).is_file()
        k3s.run(ctx)
        assert len(starts()) == 1
        k3s.run(ctx)
        assert len(starts()) == 2


def test_the_double_counts_k3s_times_from_its_exec_not_from_its_own_imports(tmp_path: Path) -> None:
    """Real `systemctl` returns in milliseconds and K3s starts then: the systemctl double's own Python start
    must not delay "node Ready after N s", or the bench charges the double's start to firstboot."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps(cluster_scenario(ready_after=30)))
    with kube_double() as server:
        env = {
            **os.environ,
            "PATH": doubles_path(),
            "SYSTEMCTL_DOUBLE_ROOT": str(tmp_path / "root"),
            "SYSTEMCTL_DOUBLE_KUBECONFIG": str(server.write_kubeconfig(tmp_path / "k3s-double.yaml")),
            "SYSTEMCTL_DOUBLE_SCENARIO": str(scenario),
        }
        clock_offset = time.time() - time.monotonic()
        before = time.monotonic()
        subprocess.run(["systemctl", "start", "k3s.service"], env=env, check=True, timeout=30)
        node = server.store.objects[("Node", "", HOSTNAME)]
        posted = next(r for r in server.store.requests if r["path"] == "/_double/objects")
    posted_at = posted["time"] - clock_offset
    # Never earlier than the exec (rounded up one clock tick), and before the double's imports were done.
    assert before <= node.added < posted_at - 0.02


@pytest.mark.fault(
    "K3s node never becomes Ready (CNI not initialised)",
    "k3s fails within ready_timeout naming the node condition; remedy journalctl -u k3s",
)
def test_node_never_ready_fails_with_condition(tmp_path: Path) -> None:
    scenario = cluster_scenario(ready_after=None)
    scenario["nodes"][0]["message"] = "container runtime network not ready: cni plugin not initialized"
    with kube_double(scenario) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns)
        ctx = make_ctx(ctx.root, make_config(k3s={"ready_timeout_seconds": 10}), ctx.secrets, ctx.env, 0.2)
        started = time.monotonic()
        with pytest.raises(TransientFailure) as info:
            k3s.run(ctx)
        elapsed = time.monotonic() - started
        assert not k3s.check(ctx).ok
    assert f"node {HOSTNAME} is not Ready" in info.value.message
    assert "cni plugin not initialized" in info.value.message
    assert "journalctl -u k3s" in info.value.remedy
    assert 1.9 <= elapsed < 4.0  # ready_timeout_seconds 10 x time_scale 0.2


@pytest.mark.fault(
    "CoreDNS crash-looping on a DNS failure",
    "k3s fails: CoreDNS not available, pod reason named as a DNS failure; remedy resolv.conf/upstreams",
)
def test_coredns_unavailable_names_the_dns_failure(tmp_path: Path) -> None:
    scenario = cluster_scenario(ready_after=0.1, coredns_after=None)
    scenario["pods"][0]["fail"] = {"reason": "CrashLoopBackOff", "message": "plugin/forward: no upstream"}
    scenario["pods"][0]["events"] = [
        {"reason": "BackOff", "message": "dial tcp: lookup mcr.microsoft.com on 10.43.0.10:53: no such host"}
    ]
    with kube_double(scenario) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns)
        ctx = make_ctx(ctx.root, make_config(k3s={"ready_timeout_seconds": 10}), ctx.secrets, ctx.env, 0.2)
        with pytest.raises(TransientFailure) as info:
            k3s.run(ctx)
    assert "CoreDNS is not available" in info.value.message
    assert "DNS failure" in info.value.message
    assert "resolv.conf" in info.value.remedy


@pytest.mark.fault(
    "cluster DNS answers nothing for kubernetes.default / Azure names",
    "k3s fails naming the cluster DNS address and both names",
)
def test_cluster_dns_not_resolving_fails(tmp_path: Path) -> None:
    with kube_double(cluster_scenario(0.05, 0.05)) as server, dnsmasq({"other.example": "10.0.0.1"}) as dns:
        ctx = server_ctx(tmp_path, server, dns)
        with pytest.raises(TransientFailure) as info:
            k3s.run(ctx)
    assert "cluster DNS" in info.value.message
    assert "kubernetes.default.svc.cluster.local" in info.value.message
    assert "management.azure.com" in info.value.message


@pytest.mark.fault("API server 500s twice and drops watch streams", "k3s step re-lists and finishes")
def test_survives_api_errors_and_dropped_watches(tmp_path: Path) -> None:
    scenario: dict[str, Any] = cluster_scenario(ready_after=2.0, coredns_after=2.0)
    scenario["faults"] = [
        {"path": r"^/api/v1/nodes\?", "status": 500, "count": 2},
        {"path": "watch=true", "drop_after": 0.1, "count": 3},
    ]
    with kube_double(scenario) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns)
        k3s.run(ctx)
        node_lists = [r for r in server.store.requests if r["path"] == "/api/v1/nodes"]
    assert len(node_lists) >= 4  # two 500s, the list that worked, and re-lists after dropped watches


@pytest.mark.fault("k3s.service fails to start", "k3s fails: cannot start k3s; remedy journalctl -u k3s")
def test_unit_fails_to_start(tmp_path: Path) -> None:
    with kube_double(cluster_scenario()) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns, SYSTEMCTL_DOUBLE_FAIL="k3s")
        with pytest.raises(TransientFailure) as info:
            k3s.run(ctx)
    assert "cannot start k3s" in info.value.message
    assert "journalctl -u k3s" in info.value.remedy


def test_agent_token_only_in_its_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = make_config(
        k3s={"role": "agent", "server_url": "https://10.0.0.5:6443", "ready_timeout_seconds": 10}
    )
    secrets = make_secrets(k3s_token=K3S_TOKEN)
    with kube_double(cluster_scenario(ready_after=0.2)) as server:
        write_kubeconfig(root / k3s.AGENT_KUBECONFIG.lstrip("/"), server.url)
        env = {"SYSTEMCTL_DOUBLE_LOG": str(tmp_path / "systemctl.log")}
        ctx = make_ctx(root, config, secrets, env)
        k3s.run(ctx)
        assert k3s.check(ctx).ok
    token_file = ctx.path(k3s.TOKEN_FILE)
    assert token_file.read_text().strip() == K3S_TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    dropin = yaml.safe_load(ctx.path(k3s.CONFIG_DROPIN).read_text())
    assert dropin == {"node-name": HOSTNAME, "server": "https://10.0.0.5:6443", "token-file": k3s.TOKEN_FILE}
    assert "k3s agent" in ctx.path(k3s.AGENT_UNIT_FILE).read_text()
    log = (tmp_path / "systemctl.log").read_text()
    assert "k3s-agent.service" in log and "daemon-reload" in log
    assert K3S_TOKEN not in log
    everything = [p for p in root.rglob("*") if p.is_file() and p != token_file]
    assert all(K3S_TOKEN not in p.read_text(errors="replace") for p in everything)


@pytest.mark.fault("agent without a join token in the secrets", "k3s fails at once: join token missing")
def test_agent_without_token_fails_permanently(tmp_path: Path) -> None:
    config = make_config(k3s={"role": "agent", "server_url": "https://10.0.0.5:6443"})
    ctx = make_ctx(tmp_path, config, make_secrets(), {})
    with pytest.raises(PermanentFailure) as info:
        k3s.run(ctx)
    assert "join token" in info.value.message


@pytest.mark.fault("kubeconfig group-readable (0640)", "doctor: PROBLEM k3s with the mode; remedy chmod 0600")
def test_check_reports_group_readable_kubeconfig(tmp_path: Path) -> None:
    with kube_double(cluster_scenario(0, 0)) as server, dnsmasq() as dns:
        ctx = server_ctx(tmp_path, server, dns)
        server.write_kubeconfig(ctx.path(kube.KUBECONFIG), mode=0o640)
        result = k3s.check(ctx)
    assert not result.ok
    assert "0640" in result.message
    assert result.remedy and "chmod 0600" in result.remedy


def test_check_without_k3s(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, make_config(), make_secrets(), {})
    result = k3s.check(ctx)
    assert not result.ok
    assert "k3s.yaml is missing" in result.message
