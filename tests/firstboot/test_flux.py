"""The flux step against the az double and the Kubernetes API double (after a real arc step)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles.harness import (
    GIT_KEY,
    arc_pods,
    az_calls,
    az_ctx,
    az_env,
    cluster_scenario,
    kube_double,
    make_config,
    make_ctx,
    make_secrets,
)
from doubles.kube_api import KubeServer

from firstboot import kube
from firstboot.step import Context, PermanentFailure, TransientFailure
from firstboot.steps import arc, flux

pytestmark = pytest.mark.allow_subp("az")
kube._import_apis()


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    with kube_double(cluster_scenario(0, 0)) as server:
        yield server


def connected_ctx(
    tmp_path: Path, server: KubeServer, az_config: dict[str, Any] | None = None, **kw: Any
) -> Context:
    """A context whose cluster the arc step has already connected."""
    az = {
        "arc_pods": arc_pods(0.05),
        "flux_pods": [{"name": "source-controller-7f8c", "ready_after": 0.1}],
        **(az_config or {}),
    }
    ctx = az_ctx(tmp_path, server, az, **kw)
    arc.run(ctx)
    return ctx


def test_creates_extension_and_configuration_once(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = connected_ctx(tmp_path, cluster)
    flux.run(ctx)
    creates = az_calls(tmp_path / "az", "k8s-extension", "create")
    assert len(creates) == 1
    assert creates[0][creates[0].index("--extension-type") + 1] == "microsoft.flux"
    assert creates[0][creates[0].index("--cluster-type") + 1] == "connectedClusters"
    configs = az_calls(tmp_path / "az", "k8s-configuration", "flux", "create")
    assert len(configs) == 1
    argv = configs[0]
    assert argv[argv.index("--url") + 1] == "https://git.example.com/org/fleet.git"
    assert argv[argv.index("--branch") + 1] == "main"
    first = argv.index("--kustomization")
    assert argv[first + 1 : first + 4] == ["name=infra", "path=./infra", "prune=true"]
    assert 'depends_on=["infra"]' in argv
    assert argv[argv.index("--local-auth-ref") + 1] == "cluster-config-git-auth"
    # Credentials: in a Secret in the configuration's namespace, never on any az command line.
    assert GIT_KEY not in json.dumps(az_calls(tmp_path / "az"))
    assert "--https-key" not in argv
    secret = cluster.store.get("Secret", "flux-system", "cluster-config-git-auth")
    assert secret is not None
    assert base64.b64decode(secret["data"]["password"]).decode() == GIT_KEY
    assert base64.b64decode(secret["data"]["username"]).decode() == "git"
    assert flux.check(ctx).ok

    flux.run(ctx)  # a re-run creates nothing
    assert len(az_calls(tmp_path / "az", "k8s-extension", "create")) == 1
    assert len(az_calls(tmp_path / "az", "k8s-configuration", "flux", "create")) == 1


@pytest.mark.fault(
    "Flux configuration Non-Compliant (path not found)",
    "flux fails with the message of Flux; doctor PROBLEM flux",
)
def test_non_compliant_configuration_is_reported(tmp_path: Path, cluster: KubeServer) -> None:
    compliance = {
        "cluster-config": {"state": "Non-Compliant", "after": 0.0, "message": "path ./infra not found"}
    }
    ctx = connected_ctx(tmp_path, cluster, {"compliance": compliance})
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert "Non-Compliant" in info.value.message
    assert "path ./infra not found" in info.value.message
    result = flux.check(ctx)
    assert not result.ok and "Non-Compliant" in result.message


@pytest.mark.fault(
    "no permission to create the Flux extension", "flux fails at once; no configuration created"
)
def test_extension_permission_denied_fails_at_once(tmp_path: Path, cluster: KubeServer) -> None:
    faults = [{"command": "k8s-extension create", "mode": "permanent", "code": "AuthorizationFailed"}]
    ctx = connected_ctx(tmp_path, cluster, {"faults": faults})
    with pytest.raises(PermanentFailure) as info:
        flux.run(ctx)
    assert "lacks permission" in info.value.message
    assert az_calls(tmp_path / "az", "k8s-configuration", "flux", "create") == []


@pytest.mark.fault("Flux controllers crash on a DNS failure", "flux fails naming the pod and the DNS failure")
def test_flux_pods_not_ready(tmp_path: Path, cluster: KubeServer) -> None:
    pods = [
        {
            "name": "source-controller-7f8c",
            "fail": {
                "reason": "CrashLoopBackOff",
                "message": "lookup github.com on 10.43.0.10:53: server misbehaving",
            },
        }
    ]
    ctx = connected_ctx(tmp_path, cluster, {"flux_pods": pods}, time_scale=0.002)
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert "flux-system/source-controller-7f8c: CrashLoopBackOff (DNS failure" in info.value.message
    assert "resolv.conf" in info.value.remedy


@pytest.mark.fault("az k8s-extension create hangs", "killed at its bound; transient failure")
def test_hanging_extension_create_is_bounded(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = connected_ctx(tmp_path, cluster, {"faults": [{"command": "k8s-extension create", "mode": "hang"}]})
    ctx.time_scale = 0.002
    started = time.monotonic()
    with pytest.raises(TransientFailure) as info:
        flux.run(ctx)
    assert time.monotonic() - started < 6
    assert "did not finish within 2.4 s" in info.value.message


def test_no_configurations_means_nothing_to_do(tmp_path: Path, cluster: KubeServer) -> None:
    ctx = make_ctx(
        tmp_path, make_config(flux={"configurations": []}), make_secrets(git={}), az_env(tmp_path / "az")
    )
    flux.run(ctx)
    assert az_calls(tmp_path / "az") == []
    assert flux.check(ctx).ok
