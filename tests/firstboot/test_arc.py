"""The arc step: the connected cluster read through the real Azure SDK from the ARM double, `az connectedk8s
connect` through the az double (on PATH), the agents through the Kubernetes API double."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import ArmDouble, Fault, cluster_id
from doubles.harness import (
    GUID_CLIENT,
    GUID_SUB,
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
from fixtures.firstboot_plugin import Pki

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
CLUSTER_ID = cluster_id(GUID_SUB, "rg-edge", "arc-node-a")


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    with kube_double(cluster_scenario(0, 0)) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki) -> Any:
    """`world(az_config, config, secrets, scale)`: an arc step context on the doubles."""

    def make(
        az_config: dict[str, Any] | None = None,
        config: OnboardingConfig | None = None,
        secrets: OnboardingSecrets | None = None,
        scale: float = 1.0,
    ) -> Context:
        az = {"arc_pods": arc_pods(), **(az_config or {})}
        return az_ctx(
            tmp_path, cluster, az, arm=arm, ca=pki.ca.cert, config=config, secrets=secrets, time_scale=scale
        )

    return make


def test_connects_once_with_the_documented_flags(tmp_path: Path, world: Any, arm: ArmDouble) -> None:
    ctx = world()
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
    # The image's helm and K3s's kubectl: connectedk8s downloads neither.
    env = az_envs(tmp_path / "az", "connectedk8s", "connect")[0]
    assert env["HELM_CLIENT_PATH"] == str(ctx.path(azcli.HELM_PATH))
    assert env["KUBECTL_CLIENT_PATH"] == str(ctx.path(azcli.KUBECTL_PATH))
    # The secret travelled as @FILE, the file is gone, and the az config dir is root-only.
    login = az_calls(tmp_path / "az", "login")[0]
    password = login[login.index("--password") + 1]
    assert password.startswith("@")
    assert not Path(password[1:]).exists()
    assert SP_SECRET not in json.dumps(az_calls(tmp_path / "az"))
    assert stat.S_IMODE(ctx.path(azcli.AZ_CONFIG_DIR).stat().st_mode) == 0o700
    # The lookup went through Resource Manager as the service principal, with the SDK's api-version.
    gets = [r for r in arm.requests(arm_only=True) if r.path == CLUSTER_ID]
    assert gets and {(r.api_version, r.client_id) for r in gets} == {("2026-05-01", GUID_CLIENT)}
    assert arc.check(ctx).ok

    # After connect: `az logout`, and az's credential files (which held the secret) are gone.
    assert az_calls(tmp_path / "az", "logout") == [
        ["logout", "--username", GUID_CLIENT, "--output", "json", "--only-show-errors"]
    ]
    assert azcli.credential_files(ctx) == []
    config_dir = ctx.path(azcli.AZ_CONFIG_DIR)
    assert [p for p in config_dir.rglob("*") if p.is_file() and SP_SECRET.encode() in p.read_bytes()] == []

    # A second run (a reboot after success) reads the cluster and starts no az process at all.
    calls = len(az_calls(tmp_path / "az"))
    arc.run(ctx)
    assert len(az_calls(tmp_path / "az")) == calls == 3  # login + connect + logout, once


def test_proxy_flags(tmp_path: Path, world: Any) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIBproxyca\n-----END CERTIFICATE-----\n"
    config = make_config(
        proxy={
            "https_proxy": "http://proxy.lab:3128",
            "http_proxy": "http://proxy.lab:3128",
            "ca_bundle_pem": pem,
        }
    )
    ctx = world(config=config)
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


def test_certificate_sign_in(tmp_path: Path, world: Any, arm: ArmDouble, pki: Pki) -> None:
    pem = pki.leaf.key.read_text() + pki.leaf.cert.read_text()
    arm.config.principals[GUID_CLIENT] = pki.leaf.pem()
    config = make_config(arc={**make_config().model_dump(mode="json")["arc"], "auth": "certificate"})
    secrets = OnboardingSecrets.model_validate({"sp_certificate_pem": pem})
    ctx = world({"certificate": pem, "secret": None}, config=config, secrets=secrets)
    arc.run(ctx)
    login = az_calls(tmp_path / "az", "login")[0]
    assert "--certificate" in login and "--password" not in login
    assert "PRIVATE KEY" not in json.dumps(login)
    token = [r for r in arm.requests() if r.path.endswith("/token")]
    assert [r.status for r in token] == [200]  # the SDK signed an assertion the double verified
    # az read the certificate file again at connect (its store keeps the path); removed after sign-out.
    assert len(az_calls(tmp_path / "az", "connectedk8s", "connect")) == 1
    assert not Path(login[login.index("--certificate") + 1]).exists()
    assert azcli.credential_files(ctx) == []


def _wrong_secret(arm: ArmDouble, pki: Pki) -> dict[str, str]:
    arm.config.principals[GUID_CLIENT] = "another-secret"
    return {}


def _unknown_client(arm: ArmDouble, pki: Pki) -> dict[str, str]:
    arm.config.principals = {"00000000-0000-0000-0000-000000000009": SP_SECRET}
    return {}


def _unknown_group(arm: ArmDouble, pki: Pki) -> dict[str, str]:
    arm.config.resource_groups = {"rg-other"}
    return {}


def _intercepted(arm: ArmDouble, pki: Pki) -> dict[str, str]:
    return {"ARCBAKE_AZURE_CA_BUNDLE": str(pki.mitm_ca.cert)}


@pytest.mark.parametrize(
    ("setup", "az_config", "meaning", "remedy"),
    [
        (_wrong_secret, {}, "AADSTS7000215", "sp_secret"),
        (_unknown_client, {}, "does not exist in tenant", "arc.client_id"),
        (_unknown_group, {}, "resource group arc.resource_group does not exist", "az group create"),
        (
            None,
            {
                "faults": [
                    {"command": "connectedk8s connect", "mode": "permanent", "code": "AuthorizationFailed"}
                ]
            },
            "lacks permission",
            "Arc Onboarding",
        ),
        (_intercepted, {}, "certificate on the way to Azure is not trusted", "proxy.ca_bundle_pem"),
    ],
)
@pytest.mark.fault(
    "Azure rejects the sign-in or request (bad secret, unknown SP, unknown resource group, no permission, "
    "untrusted TLS)",
    "arc fails at once (no retry), meaning and remedy named, secret not shown",
)
def test_permanent_errors_fail_at_once(
    world: Any,
    arm: ArmDouble,
    pki: Pki,
    setup: Callable[[ArmDouble, Pki], dict[str, str]] | None,
    az_config: dict[str, Any],
    meaning: str,
    remedy: str,
) -> None:
    env = setup(arm, pki) if setup else {}
    ctx = world(az_config)
    ctx.env = {**ctx.env, **env}
    with pytest.raises(PermanentFailure) as info:
        arc.run(ctx)
    assert meaning in info.value.message
    assert remedy in info.value.remedy
    assert SP_SECRET not in info.value.message


@pytest.mark.fault(
    "the image lacks helm", "arc fails at once before any az process (connectedk8s would download it)"
)
def test_missing_helm_fails_before_connect(tmp_path: Path, world: Any) -> None:
    ctx = world()
    ctx.path(azcli.HELM_PATH).unlink()
    with pytest.raises(PermanentFailure) as info:
        arc.run(ctx)
    assert "/usr/local/bin/helm is missing" in info.value.message
    assert "builder build" in info.value.remedy
    assert az_calls(tmp_path / "az") == []


@pytest.mark.fault("Resource Manager throttles the lookup (429 + Retry-After)", "the SDK waits and retries")
def test_throttled_lookup_is_retried(tmp_path: Path, world: Any, arm: ArmDouble) -> None:
    arm.config.faults.append(Fault(match=f"GET {CLUSTER_ID}", status=429, retry_after=1))
    arc.run(world())
    assert [r.status for r in arm.requests(arm_only=True) if r.path == CLUSTER_ID][:2] == [429, 404]


@pytest.mark.fault(
    "az connectedk8s connect fails twice with 503", "retried with backoff; connected on the third attempt"
)
def test_transient_connect_failures_are_retried_by_the_engine(tmp_path: Path, world: Any) -> None:
    faults = [{"command": "connectedk8s connect", "mode": "transient", "times": 2}]
    ctx = world({"faults": faults})
    waits: list[float] = []
    engine = Engine(ctx, [steps.Step(arc.META, arc.check, arc.run)], time_scale=0.01, sleep=waits.append)
    result = engine.run()
    assert result.ok, result.status
    assert len(az_calls(tmp_path / "az", "connectedk8s", "connect")) == 3
    # Signed out after each failed connect (no secret left on disk between attempts), in again for the next.
    assert len(az_calls(tmp_path / "az", "login")) == len(az_calls(tmp_path / "az", "logout")) == 3
    assert azcli.credential_files(ctx) == []
    assert len(waits) == 2


@pytest.mark.fault(
    "az connectedk8s connect fails for good, or firstboot died mid-connect leaving az signed in",
    "az logout and its credential files removed all the same: no service principal secret left on disk",
)
def test_sign_out_after_a_failed_connect_and_after_a_crash(tmp_path: Path, world: Any) -> None:
    faults = [{"command": "connectedk8s connect", "mode": "permanent", "code": "AuthorizationFailed"}]
    ctx = world({"faults": faults})
    with pytest.raises(PermanentFailure):
        arc.run(ctx)
    assert len(az_calls(tmp_path / "az", "logout")) == 1
    assert azcli.credential_files(ctx) == []
    # A crash between login and sign-out leaves az signed in: sign_out (in the next run's `finally`, whatever
    # ensure_connected finds) logs out and removes the files.
    azcli.login(ctx, ctx.require_config().arc)
    store = ctx.path(azcli.AZ_CONFIG_DIR) / "service_principal_entries.json"
    assert SP_SECRET in store.read_text()
    azcli.sign_out(ctx, ctx.require_config().arc)
    assert not store.exists() and azcli.credential_files(ctx) == []
    assert len(az_calls(tmp_path / "az", "logout")) == 2
    # Nothing to sign out: no az process.
    azcli.sign_out(ctx, ctx.require_config().arc)
    assert len(az_calls(tmp_path / "az", "logout")) == 2


@pytest.mark.fault("az connectedk8s connect hangs", "killed at its bound; transient failure naming the call")
def test_hanging_connect_is_bounded(world: Any) -> None:
    config = make_config(
        arc={**make_config().model_dump(mode="json")["arc"], "onboarding_timeout_seconds": 60}
    )
    ctx = world({"faults": [{"command": "connectedk8s connect", "mode": "hang"}]}, config, scale=0.005)
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
def test_agent_pods_not_ready_are_named_with_reasons(world: Any) -> None:
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
    ctx = world({"arc_pods": pods}, config, scale=0.02)
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
def test_waits_for_a_connect_still_in_progress(
    tmp_path: Path, world: Any, arm: ArmDouble, cluster: KubeServer
) -> None:
    """An earlier run's az is still creating the cluster: wait for it, never connect a second time."""
    ctx = world(scale=0.002)  # settle wait: (300 + 300) s x 0.002 = 1.2 s
    arm.put_resource(CLUSTER_ID, {"provisioningState": "Creating", "connectivityStatus": "Connecting"})
    with pytest.raises(TransientFailure) as info:
        arc.run(ctx)
    assert "still being created" in info.value.message

    # The earlier az finishes while this run waits: the run goes on without connecting.
    ctx.time_scale = 1.0
    finished = threading.Timer(0.8, _finish_connect, args=(arm, cluster))
    finished.start()
    try:
        arc.run(ctx)
    finally:
        finished.join()
    assert az_calls(tmp_path / "az") == []
    assert len([r for r in arm.requests(arm_only=True) if r.path == CLUSTER_ID]) >= 3


def _finish_connect(arm: ArmDouble, cluster: KubeServer) -> None:
    # What the earlier connect's agents install: their pods and their record of the resource.
    record = {"AZURE_RESOURCE_GROUP": "rg-edge", "AZURE_RESOURCE_NAME": "arc-node-a"}
    cluster.store.load(
        {
            "pods": [{"namespace": "azure-arc", **p} for p in arc_pods(0)],
            "configmaps": [{"namespace": "azure-arc", "name": "azure-clusterconfig", "data": record}],
        }
    )
    arm.put_resource(CLUSTER_ID, {"connectivityStatus": "Connected"})


def test_check_before_connect(world: Any) -> None:
    result = arc.check(world())
    assert not result.ok
    assert "is not connected to Arc" in result.message


def test_a_stale_resource_of_another_cluster_fails_at_once(
    tmp_path: Path, world: Any, arm: ArmDouble
) -> None:
    """Re-deploy after `deploy --replace`: the resource of that name is the old clone's; this cluster has no
    Arc agents. Fail at once with the remedy (no connect, no wait for pods that never come)."""
    ctx = world()
    arm.put_resource(CLUSTER_ID, {"connectivityStatus": "Offline"})
    (tmp_path / "az" / "az-state.json").write_text(
        json.dumps(
            {"clusters": {"rg-edge/arc-node-a": {"name": "arc-node-a", "provisioningState": "Succeeded"}}}
        )
    )
    started = time.monotonic()
    with pytest.raises(PermanentFailure) as info:
        arc.run(ctx)
    assert time.monotonic() - started < 10
    assert "exists but belongs to another Kubernetes cluster" in info.value.message
    assert "builder destroy FLEET" in (info.value.remedy or "")
    assert az_calls(tmp_path / "az", "connectedk8s", "connect") == []
    # The double refuses such a connect as connectedk8s does.
    azcli.login(ctx, ctx.require_config().arc)
    result = azcli.run(ctx, arc.connect_args(ctx, ctx.require_config()))
    assert result.exit_code == 1 and "corresponds to a different Kubernetes cluster" in result.stderr


def test_on_conflict_replace_deletes_the_stale_resource_and_connects(
    tmp_path: Path, world: Any, arm: ArmDouble
) -> None:
    """`arc.on_conflict: replace`: the stale resource is deleted through Resource Manager (its extensions
    and Flux configurations with it), then this cluster is connected under that name."""
    base = make_config()
    assert base.arc is not None
    config = base.model_copy(update={"arc": base.arc.model_copy(update={"on_conflict": "replace"})})
    ctx = world(config=config)
    arm.config.lro_seconds = 0.3
    arm.put_resource(CLUSTER_ID, {"connectivityStatus": "Offline"})
    done = arc.ensure_connected(ctx, config)
    assert done == "connected"
    deletes = [r for r in arm.requests(arm_only=True) if r.method == "DELETE"]
    assert [r.path for r in deletes] == [CLUSTER_ID]
    connects = az_calls(tmp_path / "az", "connectedk8s", "connect")
    assert len(connects) == 1
    # The DELETE was answered (202) and the resource gone before connect ran.
    gets_after_delete = [r.status for r in arm.requests(arm_only=True) if r.method == "GET"][-1:]
    assert gets_after_delete == [404]
    # Now the cluster's own agents record the resource: a re-run is "already connected".
    assert arc.ensure_connected(ctx, config).startswith("already connected")
    assert len(az_calls(tmp_path / "az", "connectedk8s", "connect")) == 1
