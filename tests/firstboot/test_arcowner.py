"""Which connected cluster this K3s cluster's Arc agents belong to (the `azure-clusterconfig` ConfigMap
`az connectedk8s connect` installs, as connectedk8s reads it: Azure/azure-cli-extensions,
src/connectedk8s/azext_connectedk8s/custom.py, `connect`), read through the real kubernetes client from
the Kubernetes API double, and the arc step's conflict decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from doubles.harness import kube_double, make_config, make_ctx

from firstboot import arcowner, kube
from firstboot.step import TransientFailure

kube._import_apis()


def clusterconfig(group: str, name: str) -> dict[str, Any]:
    return {
        "namespace": "azure-arc",
        "name": "azure-clusterconfig",
        "data": {"AZURE_RESOURCE_GROUP": group, "AZURE_RESOURCE_NAME": name, "AZURE_REGION": "westeurope"},
    }


@pytest.mark.parametrize(
    ("configmaps", "expected"),
    [
        ([], "exists but belongs to another Kubernetes cluster (this cluster has no Arc agents)"),
        ([clusterconfig("RG-EDGE", "Arc-Node-A")], None),  # Azure names compare case-insensitively
        ([clusterconfig("rg-edge", "arc-node-a")], None),
        ([clusterconfig("rg-other", "arc-node-a")], "already connected to Azure Arc as rg-other/arc-node-a"),
    ],
)
def test_conflict_is_decided_by_the_agents_own_record(
    tmp_path: Path, configmaps: list[dict[str, Any]], expected: str | None
) -> None:
    config = make_config()
    assert config.arc is not None
    with kube_double({"configmaps": configmaps}) as server:
        root = tmp_path / "root"
        server.write_kubeconfig(root / kube.KUBECONFIG.lstrip("/"))
        ctx = make_ctx(root, config)
        arc = config.arc.model_copy(update={"resource_group": "rg-edge", "cluster_name": "arc-node-a"})
        found = arcowner.conflict(ctx, arc)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found


def test_an_unreachable_api_is_never_taken_for_no_agents(tmp_path: Path) -> None:
    # The answer decides whether a resource is deleted: an API that does not answer is a transient failure.
    with kube_double({"faults": [{"path": "configmaps", "status": 500, "count": 5}]}) as server:
        root = tmp_path / "root"
        server.write_kubeconfig(root / kube.KUBECONFIG.lstrip("/"))
        ctx = make_ctx(root, make_config())
        with pytest.raises(TransientFailure, match="cannot read azure-arc/azure-clusterconfig"):
            arcowner.owner(ctx)
