"""The flux step through the real Azure SDK against the ARM double, after a real arc step (az double for
`connectedk8s connect`, Kubernetes API double for the pods)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import ArmDouble, Compliance, Fault, cluster_id
from doubles.harness import (
    GIT_KEY,
    GUID_SUB,
    arc_pods,
    az_calls,
    az_ctx,
    az_env,
    cluster_scenario,
    config_dict,
    kube_double,
    make_config,
    make_ctx,
    make_secrets,
)
from doubles.kube_api import KubeServer
from fixtures.firstboot_plugin import Pki

from firstboot import kube
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import arc, flux

pytestmark = pytest.mark.allow_subp("az")
kube._import_apis()
FLUX_PODS = [{"name": "source-controller-7f8c", "ready_after": 0.1}]


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    with kube_double(cluster_scenario(0, 0)) as server:
        yield server


def connected_ctx(
    tmp_path: Path,
    server: KubeServer,
    arm: ArmDouble,
    pki: Pki,
    flux_pods: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> Context:
    """A context whose cluster the arc step has already connected."""
    ctx = az_ctx(
        tmp_path, server, {"arc_pods": arc_pods(0.05)}, arm=arm, ca=pki.ca.cert,
        flux_pods=flux_pods or FLUX_PODS, **kw,
    )  # fmt: skip
    arc.run(ctx)
    return ctx


def flux_writes(arm: ArmDouble, method: str = "PUT") -> list[str]:
    return [
        r.path
        for r in arm.requests(arm_only=True)
        if r.method == method and "KubernetesConfiguration" in r.path
    ]


def test_creates_extension_and_configuration_once(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    flux.run(ctx)
    writes = flux_writes(arm)
    assert [w.rsplit("/", 2)[-2:] for w in writes] == [
        ["extensions", "flux"],
        ["fluxConfigurations", "cluster-config"],
    ]
    ext = arm.resource(writes[0])
    assert ext is not None and ext["properties"]["extensionType"] == "microsoft.flux"
    doc = arm.resource(writes[1])
    assert doc is not None
    props = doc["properties"]
    assert props["gitRepository"]["url"] == "https://git.example.com/org/fleet.git"
    assert props["gitRepository"]["repositoryRef"] == {"branch": "main"}
    assert props["gitRepository"]["localAuthRef"] == "cluster-config-git-auth"
    assert props["kustomizations"]["infra"] == {
        "name": "infra",
        "path": "./infra",
        "prune": True,
        "dependsOn": [],
    }
    assert props["kustomizations"]["apps"]["dependsOn"] == ["infra"]
    # Credentials: in a Secret in the configuration's namespace, never in Azure nor on any command line.
    assert GIT_KEY not in json.dumps(arm.state.resources)
    assert GIT_KEY not in json.dumps(az_calls(tmp_path / "az"))
    secret = cluster.store.get("Secret", "flux-system", "cluster-config-git-auth")
    assert secret is not None
    assert base64.b64decode(secret["data"]["password"]).decode() == GIT_KEY
    assert base64.b64decode(secret["data"]["username"]).decode() == "git"
    assert flux.check(ctx).ok
    # No az process for Flux: only the arc step's login, connect and logout.
    assert [a[:2] for a in az_calls(tmp_path / "az")] == [
        ["login", "--service-principal"],
        ["connectedk8s", "connect"],
        ["logout", "--username"],
    ]

    flux.run(ctx)  # a re-run creates nothing
    assert len(flux_writes(arm)) == 2


def test_many_configurations_bounded_pool_and_one_list_per_round(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    base = config_dict()["flux"]["configurations"][0]
    configs = [{**base, "name": f"cfg-{i:03d}"} for i in range(60)]
    config = make_config(flux={"configurations": configs})
    arm.config.default_compliance = Compliance(after=0.3)
    ctx = connected_ctx(tmp_path, cluster, arm, pki, config=config, secrets=make_secrets(git={}))
    before = len(arm.requests(arm_only=True))
    flux.run(ctx)
    requests = arm.requests(arm_only=True)[before:]
    puts = [r for r in requests if r.method == "PUT" and "fluxConfigurations" in r.path]
    lists = [r for r in requests if r.method == "GET" and r.path.endswith("/fluxConfigurations")]
    assert len(puts) == 60
    # One list before creating, then one per poll round: each list is 2 pages of 50 (60 configurations),
    # never a GET per configuration.
    assert not [r for r in requests if r.method == "GET" and "/fluxConfigurations/" in r.path]
    assert 2 <= len(lists) / 2 <= 8


@pytest.mark.fault(
    "Flux configuration Non-Compliant (path not found)",
    "flux fails with the message of Flux; doctor PROBLEM flux",
)
def test_non_compliant_configuration_is_reported(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    arm.config.compliance["cluster-config"] = Compliance("Non-Compliant", message="path ./infra not found")
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert "Non-Compliant" in info.value.message
    assert "path ./infra not found" in info.value.message
    result = flux.check(ctx)
    assert not result.ok and "Non-Compliant" in result.message


@pytest.mark.fault(
    "no permission to create the Flux extension (403 AuthorizationFailed)",
    "flux fails at once; no configuration created",
)
def test_extension_permission_denied_fails_at_once(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    arm.config.faults.append(
        Fault(match="PUT /subscriptions", status=403, code="AuthorizationFailed", times=0)
    )
    with pytest.raises(PermanentFailure) as info:
        flux.run(ctx)
    assert "lacks permission" in info.value.message
    assert "Contributor" in info.value.remedy
    assert not [p for p in flux_writes(arm) if "fluxConfigurations" in p]


@pytest.mark.fault(
    "Resource Manager throttles (429 + Retry-After) and fails (503) once each",
    "the SDK retries; flux succeeds",
)
def test_throttling_and_5xx_are_absorbed(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    arm.config.faults += [
        Fault(match="PUT /subscriptions", status=429, retry_after=1),
        Fault(match="fluxConfigurations", status=503),
    ]
    flux.run(ctx)
    statuses = [r.status for r in arm.requests(arm_only=True)]
    assert 429 in statuses and 503 in statuses


@pytest.mark.fault("the Flux extension fails to provision", "flux fails at once; no configuration created")
def test_failed_extension_is_permanent(tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    arm.config.lro_type_seconds["fluxconfigurations"] = 0.2
    arm.config.lro_result = "Failed"
    arm.config.lro_type_seconds["extensions"] = 0.0
    with pytest.raises(PermanentFailure) as info:
        # The extension is created first (it fails too with lro_result Failed): the extension's state is
        # reported, never a configuration created on a failed extension.
        flux.run(ctx)
    assert "the Flux extension is in state Failed" in info.value.message
    assert not [p for p in flux_writes(arm) if "fluxConfigurations" in p]


@pytest.mark.fault(
    "an earlier run's Flux configuration is Failed", "flux fails at once naming it, not re-created"
)
def test_failed_configuration_is_permanent(
    tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki
) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    cluster_path = cluster_id(GUID_SUB, "rg-edge", "arc-node-a")
    prefix = f"{cluster_path}/providers/Microsoft.KubernetesConfiguration"
    arm.put_resource(f"{prefix}/extensions/flux", {"extensionType": "microsoft.flux"})
    failed = {"provisioningState": "Failed", "errorMessage": "the source could not be reached"}
    arm.put_resource(f"{prefix}/fluxConfigurations/cluster-config", failed)
    cluster.store.load({"pods": [{"namespace": "flux-system", **p} for p in FLUX_PODS]})
    with pytest.raises(PermanentFailure) as info:
        flux.run(ctx)
    assert "Flux configuration cluster-config is in state Failed: the source could not be reached" in (
        info.value.message
    )
    assert "delete" in info.value.remedy
    assert flux_writes(arm) == []


@pytest.mark.fault("Flux controllers crash on a DNS failure", "flux fails naming the pod and the DNS failure")
def test_flux_pods_not_ready(tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki) -> None:
    pods = [
        {
            "name": "source-controller-7f8c",
            "fail": {
                "reason": "CrashLoopBackOff",
                "message": "lookup github.com on 10.43.0.10:53: server misbehaving",
            },
        }
    ]
    ctx = connected_ctx(tmp_path, cluster, arm, pki, flux_pods=pods, time_scale=0.002)
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert "flux-system/source-controller-7f8c: CrashLoopBackOff (DNS failure" in info.value.message
    assert "resolv.conf" in info.value.remedy


@pytest.mark.fault(
    "the extension stays Creating past its bound", "transient failure; the next attempt checks again"
)
def test_slow_extension_is_bounded(tmp_path: Path, cluster: KubeServer, arm: ArmDouble, pki: Pki) -> None:
    ctx = connected_ctx(tmp_path, cluster, arm, pki)
    arm.config.lro_type_seconds["extensions"] = 60
    # The controllers run (a helm release in progress), but the extension's operation does not finish.
    cluster.store.load({"pods": [{"namespace": "flux-system", **p} for p in FLUX_PODS]})
    ctx.time_scale = 0.002  # settle wait: 1200 s x 0.002 = 2.4 s
    started = time.monotonic()
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert time.monotonic() - started < 6
    assert "still being created" in info.value.message


@pytest.mark.parametrize(("value", "seconds"), [("600", 600), ("10m", 600), ("1h30m", 5400), ("45s", 45)])
def test_sync_interval(value: str, seconds: int) -> None:
    assert flux.sync_seconds(value) == seconds


@pytest.mark.parametrize("value", ["", "10 minutes", "1d", "m"])
def test_sync_interval_refused(value: str) -> None:
    with pytest.raises(PermanentFailure, match="sync_interval"):
        flux.sync_seconds(value)


def test_no_configurations_means_nothing_to_do(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = make_ctx(
        tmp_path, make_config(flux={"configurations": []}), make_secrets(git={}), az_env(tmp_path / "az")
    )
    flux.run(ctx)
    assert az_calls(tmp_path / "az") == []
    assert flux.check(ctx).ok
