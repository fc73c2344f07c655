"""The arc step against the az double (on PATH) and the Kubernetes API double."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.harness import (
    SP_SECRET,
    arc_pods,
    az_calls,
    az_ctx,
    az_envs,
    cluster_scenario,
    kube_double,
    make_config,
)
from doubles.kube_api import KubeServer

from firstboot import azcli, kube, steps
from firstboot.contract import OnboardingConfig, OnboardingSecrets
from firstboot.engine import Engine
from firstboot.proxyenv import proxy_skip_range
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import arc

pytestmark = pytest.mark.allow_subp("az")
kube._import_apis()

SSL_ERROR = (
    "HTTPSConnectionPool(host='login.microsoftonline.com', port=443): Max retries exceeded (Caused by "
    "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
    "self-signed certificate in certificate chain')))"
)
CERT_PEM = (
    "-----BEGIN CERTIFICATE-----\nMIIBplanted\n-----END CERTIFICATE-----\n"
    "-----BEGIN PRIVATE KEY-----\nMIIEplanted-key-Wq2\n-----END PRIVATE KEY-----\n"
)


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    with kube_double(cluster_scenario(0, 0)) as server:
        yield server


def arc_ctx(
    tmp_path: Path,
    server: KubeServer,
    az_config: dict[str, Any] | None = None,
    config: OnboardingConfig | None = None,
    secrets: OnboardingSecrets | None = None,
    scale: float = 1.0,
) -> Context:
    az = {"arc_pods": arc_pods(), **(az_config or {})}
    return az_ctx(tmp_path, server, az, config=config, secrets=secrets, time_scale=scale)


def test_connects_once_with_the_documented_flags(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = arc_ctx(tmp_path, cluster)
    arc.run(ctx)
    connects = az_calls(tmp_path / "az", "connectedk8s", "connect")
    assert len(connects) == 1
    argv = connects[0]
    for flag, value in [
        ("--kube-config", str(ctx.path(kube.KUBECONFIG))),
        ("--distribution", "k3s"),
        ("--infrastructure", "vsphere"),
        ("--onboarding-timeout", "300"),
        ("--resource-group", "rg-edge"),
        ("--location", "westeurope"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    assert argv[argv.index("--tags") + 1 : argv.index("--tags") + 3] == ["owner=ops", "site=lab"]
    assert "--proxy-https" not in argv
    # The secret travelled as @FILE, the file is gone, and the az config dir is root-only.
    login = az_calls(tmp_path / "az", "login")[0]
    password = login[login.index("--password") + 1]
    assert password.startswith("@")
    assert not Path(password[1:]).exists()
    assert SP_SECRET not in json.dumps(az_calls(tmp_path / "az"))
    assert stat.S_IMODE(ctx.path(azcli.AZ_CONFIG_DIR).stat().st_mode) == 0o700
    assert arc.check(ctx).ok

    # A second run (a reboot after success) shows the cluster and does not connect again.
    arc.run(ctx)
    assert len(az_calls(tmp_path / "az", "connectedk8s", "connect")) == 1
    assert len(az_calls(tmp_path / "az", "connectedk8s", "show")) == 3  # run, check, run


def test_proxy_flags(tmp_path: Path, cluster: KubeServer) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIBproxyca\n-----END CERTIFICATE-----\n"
    config = make_config(
        proxy={
            "https_proxy": "http://proxy.lab:3128",
            "http_proxy": "http://proxy.lab:3128",
            "ca_bundle_pem": pem,
        }
    )
    ctx = arc_ctx(tmp_path, cluster, config=config)
    arc.run(ctx)
    argv = az_calls(tmp_path / "az", "connectedk8s", "connect")[0]
    assert argv[argv.index("--proxy-https") + 1] == "http://proxy.lab:3128"
    assert argv[argv.index("--proxy-http") + 1] == "http://proxy.lab:3128"
    assert argv[argv.index("--proxy-skip-range") + 1] == proxy_skip_range(config.proxy, config.k3s)
    assert "10.43.0.0/16" in proxy_skip_range(config.proxy, config.k3s)
    assert argv[argv.index("--proxy-cert") + 1].endswith("arcbake-proxy-ca.pem")
    env = az_envs(tmp_path / "az", "connectedk8s", "connect")[0]
    assert env["REQUESTS_CA_BUNDLE"] == str(ctx.path("/etc/pki/tls/certs/ca-bundle.crt"))
    assert env["AZURE_CONFIG_DIR"] == str(ctx.path(azcli.AZ_CONFIG_DIR))


def test_certificate_login(tmp_path: Path, cluster: KubeServer) -> None:
    config = make_config(arc={**make_config().model_dump(mode="json")["arc"], "auth": "certificate"})
    secrets = OnboardingSecrets.model_validate({"sp_certificate_pem": CERT_PEM})
    ctx = arc_ctx(
        tmp_path, cluster, {"certificate": CERT_PEM, "secret": None}, config=config, secrets=secrets
    )
    arc.run(ctx)
    login = az_calls(tmp_path / "az", "login")[0]
    assert "--certificate" in login and "--password" not in login
    assert "planted-key" not in json.dumps(login)


@pytest.mark.parametrize(
    ("az_config", "meaning", "remedy"),
    [
        ({"secret": "another-secret"}, "AADSTS7000215", "sp_secret"),
        ({"client_id": "00000000-0000-0000-0000-000000000009"}, "does not exist in tenant", "arc.client_id"),
        (
            {"resource_groups": ["rg-other"]},
            "resource group arc.resource_group does not exist",
            "az group create",
        ),
        (
            {
                "faults": [
                    {"command": "connectedk8s connect", "mode": "permanent", "code": "AuthorizationFailed"}
                ]
            },
            "lacks permission",
            "Arc Onboarding",
        ),
        (
            {"faults": [{"command": "login", "mode": "permanent", "code": "SSLError", "message": SSL_ERROR}]},
            "certificate on the way to Azure is not trusted",
            "proxy.ca_bundle_pem",
        ),
    ],
)
@pytest.mark.fault(
    "Azure rejects the sign-in or request (bad secret, unknown SP, unknown resource group, no permission)",
    "arc fails at once (no retry), meaning and remedy named, secret not shown",
)
def test_permanent_errors_fail_at_once(
    tmp_path: Path, cluster: KubeServer, az_config: dict[str, Any], meaning: str, remedy: str
) -> None:
    ctx = arc_ctx(tmp_path, cluster, az_config)
    with pytest.raises(PermanentFailure) as info:
        arc.run(ctx)
    assert meaning in info.value.message
    assert remedy in info.value.remedy
    assert SP_SECRET not in info.value.message


@pytest.mark.fault(
    "az connectedk8s connect fails twice with 503", "retried with backoff; connected on the third attempt"
)
def test_transient_connect_failures_are_retried_by_the_engine(tmp_path: Path, cluster: KubeServer) -> None:
    faults = [{"command": "connectedk8s connect", "mode": "transient", "times": 2}]
    ctx = arc_ctx(tmp_path, cluster, {"faults": faults})
    waits: list[float] = []
    engine = Engine(ctx, [steps.Step(arc.META, arc.check, arc.run)], time_scale=0.01, sleep=waits.append)
    result = engine.run()
    assert result.ok, result.status
    assert len(az_calls(tmp_path / "az", "connectedk8s", "connect")) == 3
    assert len(waits) == 2


@pytest.mark.fault("az connectedk8s connect hangs", "killed at its bound; transient failure naming the call")
def test_hanging_connect_is_bounded(tmp_path: Path, cluster: KubeServer) -> None:
    config = make_config(
        arc={**make_config().model_dump(mode="json")["arc"], "onboarding_timeout_seconds": 60}
    )
    ctx = arc_ctx(
        tmp_path,
        cluster,
        {"faults": [{"command": "connectedk8s connect", "mode": "hang"}]},
        config,
        scale=0.005,
    )
    started = time.monotonic()
    with pytest.raises(TransientFailure) as info:
        arc.run(ctx)
    assert time.monotonic() - started < 6
    assert "az connectedk8s connect did not finish within 1.8 s" in info.value.message
    assert "proxy" in info.value.remedy


@pytest.mark.fault(
    "Arc agent pods crash (x509) and cannot pull images (DNS)",
    "arc fails listing each pod with certificate / DNS failure named; remedy proxy CA",
)
def test_agent_pods_not_ready_are_named_with_reasons(tmp_path: Path, cluster: KubeServer) -> None:
    pods = [
        {"name": "config-agent-7b5c", "ready_after": 0.1},
        {
            "name": "clusterconnect-agent-6c8b",
            "fail": {"reason": "CrashLoopBackOff", "message": "exit status 1"},
            "events": [{"reason": "BackOff", "message": "x509: certificate signed by unknown authority"}],
        },
        {
            "name": "kube-aad-proxy-5b9d",
            "fail": {
                "reason": "ImagePullBackOff",
                "message": "dial tcp: lookup mcr.microsoft.com: no such host",
            },
        },
    ]
    config = make_config(
        arc={**make_config().model_dump(mode="json")["arc"], "onboarding_timeout_seconds": 60}
    )
    ctx = arc_ctx(tmp_path, cluster, {"arc_pods": pods}, config, scale=0.02)
    with pytest.raises(TransientFailure) as info:
        arc.run(ctx)
    message = info.value.message
    assert "2 pod(s) not Ready" in message
    assert "azure-arc/clusterconnect-agent-6c8b: CrashLoopBackOff (certificate failure: x509" in message
    assert "azure-arc/kube-aad-proxy-5b9d: ImagePullBackOff (DNS failure" in message
    assert "config-agent" not in message
    assert "proxy.ca_bundle_pem" in info.value.remedy
    result = arc.check(ctx)
    assert not result.ok and "certificate failure" in result.message


@pytest.mark.fault(
    "the connect of an interrupted run still creating the cluster", "arc waits for it, never connects twice"
)
def test_waits_for_a_connect_still_in_progress(tmp_path: Path, cluster: KubeServer) -> None:
    """An earlier run's az is still creating the cluster: wait for it, never connect a second time."""
    ctx = arc_ctx(tmp_path, cluster, scale=0.002)  # settle wait: (300 + 300) s x 0.002 = 1.2 s
    state_file = tmp_path / "az" / "az-state.json"
    creating = {"name": "arc-node-a", "provisioningState": "Creating", "connectivityStatus": "Connecting"}
    state_file.write_text(json.dumps({"clusters": {"rg-edge/arc-node-a": creating}}))
    with pytest.raises(TransientFailure) as info:
        arc.run(ctx)
    assert "still being created" in info.value.message

    # The earlier az finishes while this run waits: the run goes on without connecting.
    ctx.time_scale = 1.0
    finished = threading.Timer(0.8, _finish_connect, args=(state_file, cluster))
    finished.start()
    try:
        arc.run(ctx)
    finally:
        finished.join()
    assert az_calls(tmp_path / "az", "connectedk8s", "connect") == []
    assert len(az_calls(tmp_path / "az", "connectedk8s", "show")) >= 3


def _finish_connect(state_file: Path, cluster: KubeServer) -> None:
    # What the earlier connect's agents install: their pods and their record of the resource.
    record = {"AZURE_RESOURCE_GROUP": "rg-edge", "AZURE_RESOURCE_NAME": "arc-node-a"}
    cluster.store.load(
        {
            "pods": [{"namespace": "azure-arc", **p} for p in arc_pods(0)],
            "configmaps": [{"namespace": "azure-arc", "name": "azure-clusterconfig", "data": record}],
        }
    )
    doc = json.loads(state_file.read_text())
    doc["clusters"]["rg-edge/arc-node-a"]["provisioningState"] = "Succeeded"
    state_file.write_text(json.dumps(doc))


def test_check_before_connect(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = arc_ctx(tmp_path, cluster)
    azcli.login(ctx, ctx.require_config().arc)  # type: ignore[arg-type]
    result = arc.check(ctx)
    assert not result.ok
    assert "is not connected to Arc" in result.message


def test_a_stale_resource_of_another_cluster_fails_at_once(tmp_path: Path, cluster: KubeServer) -> None:
    """Re-deploy after `deploy --replace`: the resource of that name is the old clone's; this cluster has no
    Arc agents. Fail at once with the remedy (no connect, no wait for pods that never come)."""
    ctx = arc_ctx(tmp_path, cluster)
    stale = {"name": "arc-node-a", "provisioningState": "Succeeded", "connectivityStatus": "Offline"}
    (tmp_path / "az" / "az-state.json").write_text(json.dumps({"clusters": {"rg-edge/arc-node-a": stale}}))
    started = time.monotonic()
    with pytest.raises(PermanentFailure) as info:
        arc.run(ctx)
    assert time.monotonic() - started < 10
    assert "exists but belongs to another Kubernetes cluster" in info.value.message
    assert "builder destroy FLEET" in (info.value.remedy or "")
    assert az_calls(tmp_path / "az", "connectedk8s", "connect") == []
    # The double refuses such a connect as connectedk8s does.
    result = azcli.run(ctx, arc.connect_args(ctx, ctx.require_config()))
    assert result.exit_code == 1 and "corresponds to a different Kubernetes cluster" in result.stderr
