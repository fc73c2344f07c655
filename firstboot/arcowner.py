"""Which Azure Arc connected cluster this K3s cluster is connected as, read from the cluster itself.

`az connectedk8s connect` installs the Arc agents with a ConfigMap `azure-clusterconfig` in the
`azure-arc` namespace whose `AZURE_RESOURCE_GROUP` and `AZURE_RESOURCE_NAME` name the connected cluster
the agents belong to; connectedk8s reads it to tell "this cluster is already onboarded" from "a resource of
that name corresponds to a different Kubernetes cluster" (Azure/azure-cli-extensions,
src/connectedk8s/azext_connectedk8s/custom.py, `connect`: `configmap.data["AZURE_RESOURCE_GROUP"]`).
The arc step asks the same question before it connects: a resource that exists while this cluster has no
such ConfigMap belongs to another cluster (a stale resource of a deleted or re-deployed clone).
"""

from __future__ import annotations

from dataclasses import dataclass

from firstboot import kube
from firstboot.contract import ArcConfig
from firstboot.kube import client
from firstboot.step import Context, TransientFailure

NAMESPACE = "azure-arc"
CONFIGMAP = "azure-clusterconfig"


@dataclass(frozen=True)
class Owner:
    """The connected cluster this K3s cluster's Arc agents belong to."""

    resource_group: str
    name: str

    def same(self, resource_group: str, name: str) -> bool:
        """True for that resource (Azure names are case-insensitive)."""
        return self.resource_group.lower() == resource_group.lower() and self.name.lower() == name.lower()

    def __str__(self) -> str:
        return f"{self.resource_group}/{self.name}"


def owner(ctx: Context) -> Owner | None:
    """The Arc agents' own record, None when this cluster has no Arc agents; TransientFailure when the
    API cannot be asked (the answer decides whether something is deleted, so it is never guessed)."""
    errors: tuple[type[BaseException], ...] = (kube.KubeUnavailable, *kube.api_errors())
    try:
        with kube.client_from(ctx.path(kube.KUBECONFIG)) as api:
            doc = client.CoreV1Api(api).read_namespaced_config_map(CONFIGMAP, NAMESPACE, _request_timeout=15)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise TransientFailure(
            f"cannot read {NAMESPACE}/{CONFIGMAP} (API status {exc.status})", "check k3s: `firstboot doctor`"
        ) from None
    except errors as exc:
        raise TransientFailure(
            f"cannot read {NAMESPACE}/{CONFIGMAP}: {type(exc).__name__}", "check k3s: `firstboot doctor`"
        ) from None
    data = doc.data or {}
    group, name = data.get("AZURE_RESOURCE_GROUP"), data.get("AZURE_RESOURCE_NAME")
    return Owner(str(group), str(name)) if group and name else None


def conflict(ctx: Context, arc: ArcConfig) -> str | None:
    """Why the existing connected cluster `arc` names is not this cluster's (None: it is ours).

    Called when Resource Manager holds a settled resource of that name. Ours means this K3s cluster's
    Arc agents record that very resource; otherwise the resource is another cluster's, and connecting
    would fail in `az connectedk8s connect` ("corresponds to a different Kubernetes cluster") after the
    agents' wait, or worse, look connected while no agent of this cluster runs.
    """
    found = owner(ctx)
    if found is not None and found.same(arc.resource_group, arc.cluster_name):
        return None
    if found is not None:
        return (
            f"this K3s cluster is already connected to Azure Arc as {found}, not as "
            f"{arc.resource_group}/{arc.cluster_name}"
        )
    return (
        f"connected cluster {arc.resource_group}/{arc.cluster_name} exists but belongs to another "
        "Kubernetes cluster (this cluster has no Arc agents): a stale resource of a deleted or re-deployed "
        "clone"
    )


def remedy(arc: ArcConfig) -> str:
    """What to do about a connected cluster that is not this cluster's."""
    return (
        "delete the stale resource (`builder destroy FLEET`, or `az connectedk8s delete -n "
        f"{arc.cluster_name} -g {arc.resource_group}`), then `firstboot run`; or set "
        "arc.on_conflict: replace in the fleet file (the stale resource is deleted and this cluster "
        "connected), or give this cluster another arc.cluster_name, and deploy again"
    )
