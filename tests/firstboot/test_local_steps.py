"""hostname, proxy and resources steps under --root (no network)."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from fixtures.guestinfo import DictSource, onboarding_config

from firstboot import proxyenv
from firstboot.contract import OnboardingConfig, Role
from firstboot.engine import build_context
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import hostname, proxy, resources

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def ctx_for(root: Path, **overrides: Any) -> Context:
    ctx = build_context(root, DictSource(), env={})
    ctx.config = OnboardingConfig.model_validate(onboarding_config(**overrides))
    return ctx


def test_hostname_writes_files_keeps_other_hosts_lines_and_is_idempotent(guest_root: Path) -> None:
    hosts = guest_root / "etc/hosts"
    hosts.parent.mkdir(parents=True)
    hosts.write_text("127.0.0.1 localhost\n10.0.0.5 registry.internal\n127.0.1.1 old-name # arcbake\n")
    ctx = ctx_for(guest_root)
    assert not hostname.check(ctx).ok
    hostname.run(ctx)
    hostname.run(ctx)
    assert (guest_root / "etc/hostname").read_text() == "node1\n"
    lines = hosts.read_text().splitlines()
    assert lines == [
        "127.0.0.1 localhost",
        "10.0.0.5 registry.internal",
        "127.0.1.1\tnode1.example.test node1\t# arcbake",
    ]
    result = hostname.check(ctx)
    assert result.ok and "node1.example.test" in result.message


def test_proxy_files_skip_range_and_removal(guest_root: Path) -> None:
    cfg = {"http_proxy": "http://proxy.corp:3128", "no_proxy": [".corp", "10.1.0.0/16"], "ca_bundle_pem": PEM}
    ctx = ctx_for(guest_root, proxy=cfg)
    assert not proxy.check(ctx).ok
    proxy.run(ctx)
    assert proxy.check(ctx).ok
    env = (guest_root / "etc/systemd/system/k3s.service.env").read_text()
    assert 'HTTP_PROXY="http://proxy.corp:3128"' in env
    assert 'CONTAINERD_HTTP_PROXY="http://proxy.corp:3128"' in env
    assert 'NO_PROXY="localhost,127.0.0.1,::1,10.42.0.0/16,10.43.0.0/16,kubernetes.default.svc' in env
    assert (guest_root / "etc/systemd/system/k3s-agent.service.env").read_text() == env
    assert (
        "export HTTP_PROXY='http://proxy.corp:3128'"
        in (guest_root / "etc/profile.d/arcbake-proxy.sh").read_text()
    )
    ca = guest_root / "etc/pki/ca-trust/source/anchors/arcbake-proxy-ca.pem"
    assert ca.read_text() == PEM and stat.S_IMODE(ca.stat().st_mode) == 0o644
    config = ctx.require_config()
    assert proxyenv.proxy_skip_range(config.proxy, config.k3s) == (
        "10.43.0.0/16,10.42.0.0/16,kubernetes.default.svc,.svc.cluster.local,.svc,.cluster.local,.corp,10.1.0.0/16"
    )
    env_vars = proxyenv.proxy_environment(config.proxy, config.k3s)
    assert env_vars["http_proxy"] == env_vars["HTTP_PROXY"] and "HTTPS_PROXY" not in env_vars
    # The proxy removed from metadata: our files go, others stay.
    (guest_root / "etc/profile.d/other.sh").write_text("x\n")
    ctx = ctx_for(guest_root)
    proxy.run(ctx)
    assert not (guest_root / "etc/systemd/system/k3s.service.env").exists()
    assert not ca.exists()
    assert (guest_root / "etc/profile.d/other.sh").exists()
    assert proxy.check(ctx).ok and proxy.check(ctx).message == "no proxy configured"
    assert proxyenv.proxy_environment(ctx.require_config().proxy, ctx.require_config().k3s) == {}


def plant_proc(root: Path, cpus: int, mem_kib: int) -> None:
    proc = root / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text("".join(f"processor\t: {i}\nmodel name\t: x\n\n" for i in range(cpus)))
    (proc / "meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree:        1000 kB\n")


def test_resources_minimum_recommended_and_failure(
    guest_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 100 * resources.GIB}

    class Usage:
        def __init__(self, path: object) -> None:
            self.free = free["bytes"]

    monkeypatch.setattr("firstboot.steps.resources.shutil.disk_usage", Usage)
    ctx = ctx_for(guest_root)
    plant_proc(guest_root, 8, 16 * 1024 * 1024)
    resources.run(ctx)
    assert resources.check(ctx).ok and "recommended" not in resources.check(ctx).message
    plant_proc(guest_root, 2, 4 * 1024 * 1024 - 150_000)
    resources.run(ctx)
    assert "below the recommended size" in caplog.text
    assert "recommended" in resources.check(ctx).message
    plant_proc(guest_root, 1, 2 * 1024 * 1024)
    free["bytes"] = 5 * resources.GIB
    with pytest.raises(PermanentFailure) as info:
        resources.run(ctx)
    assert "1 CPU (minimum 2)" in info.value.message
    assert "2.0 GiB memory (minimum 4.0 GiB)" in info.value.message
    assert "5.0 GiB free" in info.value.message
    assert "2 vCPU" in info.value.remedy
    assert not resources.check(ctx).ok


def test_resources_falls_back_to_host_proc(guest_root: Path) -> None:
    measured = resources.measure(ctx_for(guest_root))
    assert measured.cpus >= 1 and measured.memory_bytes > 0


def test_time_on_a_real_root_restarts_or_reloads_chrony_then_waits_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from firstboot import subp
    from firstboot.steps import time as time_step

    calls: list[tuple[list[str], float]] = []
    fail = {"waitsync": False, "refresh": False}

    def fake_run(argv: list[str], *, timeout: float, **kw: Any) -> subp.Result:
        calls.append((list(argv), timeout))
        if fail.get(argv[1]):
            raise subp.ProcessExecutionError("chronyc", argv, exit_code=1)
        return subp.Result(tuple(argv), 0, "", "")

    monkeypatch.setattr("firstboot.steps.time.subp.run", fake_run)
    monkeypatch.setattr("firstboot.steps.time.shutil.which", lambda name: f"/usr/bin/{name}")
    ctx = ctx_for(Path("/"))
    cfg = ctx.require_config().time
    time_step._waitsync(ctx, cfg, ["/etc/chrony.conf"])
    # `refresh`: chronyd resolves its source names again now that the dns step ran before it.
    assert [c[0] for c in calls] == [
        ["systemctl", "restart", "chronyd"],
        ["chronyc", "refresh"],
        ["chronyc", "waitsync", "5", "5", "0", "1"],
    ]
    assert calls[2][1] == 15
    calls.clear()
    time_step._waitsync(ctx, cfg, ["/etc/chrony.d/arcbake.sources"])
    assert calls[0][0] == ["chronyc", "reload", "sources"]
    # chrony < 4.0 has no `refresh`: logged, and waitsync still runs.
    calls.clear()
    fail["refresh"] = True
    time_step._waitsync(ctx, cfg, [])
    assert [c[0][1] for c in calls] == ["refresh", "waitsync"]
    fail["waitsync"] = True
    with pytest.raises(TransientFailure) as info:
        time_step._waitsync(ctx, cfg, [])
    assert (
        "did not synchronise within 5 s" in info.value.message and "chronyc sources -v" in info.value.remedy
    )


def test_agent_reaches_its_server_and_peers_without_the_proxy(guest_root: Path) -> None:
    # What the fleet gives an agent: the server it joins and its cluster's node network and addresses.
    ctx = ctx_for(guest_root, proxy={"https_proxy": "http://proxy.corp:3128"})
    config = ctx.require_config()
    k3s = config.k3s.model_copy(
        update={
            "role": Role.AGENT,
            "server_url": "https://edge-01.site.test:6443",
            "cluster_addresses": ["192.168.50.0/24", "192.168.50.11", "192.168.50.12"],
        }
    )
    ctx.config = config.model_copy(update={"k3s": k3s, "arc": None})
    proxy.run(ctx)
    env = (guest_root / "etc/systemd/system/k3s-agent.service.env").read_text()
    no_proxy = re.search(r'^NO_PROXY="([^"]*)"$', env, re.M)
    assert no_proxy, env
    entries = no_proxy.group(1).split(",")
    assert {"192.168.50.0/24", "192.168.50.11", "192.168.50.12", "edge-01.site.test"} <= set(entries)
