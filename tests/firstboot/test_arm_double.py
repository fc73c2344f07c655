"""The ARM + Entra ID double driven by the real Azure SDK for Python (azure-identity, azure-mgmt-*).

What is asserted is what the SDK does on the wire against the rules the double enforces: the token flow
(openid-configuration, POST token), api-versions, bearer tokens, 404/409/429/5xx, long-running operations
and paging. If the double drifted from what the SDK sends or expects, these fail.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient
from azure.mgmt.kubernetesconfiguration.extensions import KubernetesConfigurationExtensionsMgmtClient
from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
    KubernetesConfigurationFluxConfigurationsMgmtClient,
)
from doubles.arm_double import ArmDouble, Compliance, Fault, cluster_id
from doubles.harness import GUID_CLIENT, GUID_SUB, GUID_TENANT, SP_SECRET
from fixtures.firstboot_plugin import Pki

RG = "rg-edge"
CLUSTER = "arc-node-a"
SCOPES = ["https://management.azure.com/.default"]
FAST = {"retry_backoff_factor": 0.01, "polling_interval": 0.05}


def credential(arm: ArmDouble, pki: Pki, secret: str = SP_SECRET) -> ClientSecretCredential:
    return ClientSecretCredential(
        GUID_TENANT,
        GUID_CLIENT,
        secret,
        authority=arm.url,
        disable_instance_discovery=True,
        connection_verify=str(pki.ca.cert),
    )


def clients(arm: ArmDouble, pki: Pki, cred: Any = None) -> tuple[Any, Any, Any]:
    cred = cred or credential(arm, pki)
    common: dict[str, Any] = {
        "base_url": arm.url,
        "credential_scopes": SCOPES,
        "connection_verify": str(pki.ca.cert),
        **FAST,
    }
    return (
        ConnectedKubernetesClient(cred, GUID_SUB, **common),
        KubernetesConfigurationExtensionsMgmtClient(cred, GUID_SUB, **common),
        KubernetesConfigurationFluxConfigurationsMgmtClient(cred, GUID_SUB, **common),
    )


def connect(arm: ArmDouble) -> str:
    """What `az connectedk8s connect` leaves behind: a Succeeded, Connected cluster."""
    rid = cluster_id(GUID_SUB, RG, CLUSTER)
    arm.put_resource(rid, {"distribution": "k3s", "infrastructure": "vsphere"}, tags={"site": "lab"})
    return rid


def flux_body(name: str) -> dict[str, Any]:
    return {
        "properties": {
            "scope": "cluster",
            "namespace": "flux-system",
            "sourceKind": "GitRepository",
            "gitRepository": {
                "url": "https://git.example.com/org/fleet.git",
                "repositoryRef": {"branch": "main"},
            },
            "kustomizations": {
                "infra": {"path": "./infra"},
                "apps": {"path": "./apps", "dependsOn": ["infra"]},
            },
        }
    }


def test_token_flow_and_cluster_lookup(arm: ArmDouble, pki: Pki) -> None:
    hybrid, _, _ = clients(arm, pki)
    with pytest.raises(ResourceNotFoundError, match="ResourceNotFound"):
        hybrid.connected_cluster.get(RG, CLUSTER)
    connect(arm)
    got = hybrid.connected_cluster.get(RG, CLUSTER)
    assert got.properties.connectivity_status == "Connected"
    assert got.tags == {"site": "lab"}
    seen = [(r.method, r.path.split("/")[-1], r.status) for r in arm.requests()]
    assert seen[:2] == [("GET", "openid-configuration", 200), ("POST", "token", 200)]
    arm_requests = arm.requests(arm_only=True)
    assert [r.api_version for r in arm_requests] == ["2026-05-01", "2026-05-01"]
    assert {r.client_id for r in arm_requests} == {GUID_CLIENT}
    # The token is cached: one token request for both GETs.
    assert sum(1 for r in arm.requests() if r.path.endswith("/token")) == 1


def test_wrong_secret_is_refused_like_entra(arm: ArmDouble, pki: Pki) -> None:
    hybrid, _, _ = clients(arm, pki, credential(arm, pki, secret="not-the-secret"))
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        hybrid.connected_cluster.get(RG, CLUSTER)
    assert not arm.requests(arm_only=True)


def test_unknown_client_and_tenant(arm: ArmDouble, pki: Pki) -> None:
    stranger = ClientSecretCredential(
        GUID_TENANT, "44444444-4444-4444-4444-444444444444", SP_SECRET, authority=arm.url,
        disable_instance_discovery=True, connection_verify=str(pki.ca.cert),
    )  # fmt: skip
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        stranger.get_token(*SCOPES)
    elsewhere = ClientSecretCredential(
        "55555555-5555-5555-5555-555555555555", GUID_CLIENT, SP_SECRET, authority=arm.url,
        disable_instance_discovery=True, connection_verify=str(pki.ca.cert),
    )  # fmt: skip
    with pytest.raises(ClientAuthenticationError):
        elsewhere.get_token(*SCOPES)


def test_certificate_credential_signed_assertion(arm: ArmDouble, pki: Pki) -> None:
    # Any two key pairs do: the session's leaf is the registered one, another leaf signs the forgery.
    good, other = pki.leaf, pki.wrong_name
    arm.config.principals["66666666-6666-6666-6666-666666666666"] = good.pem()

    def cert_cred(pair: Any) -> CertificateCredential:
        pem = pair.key.read_bytes() + pair.cert.read_bytes()
        return CertificateCredential(
            GUID_TENANT, "66666666-6666-6666-6666-666666666666", certificate_data=pem, authority=arm.url,
            disable_instance_discovery=True, connection_verify=str(pki.ca.cert),
        )  # fmt: skip

    assert cert_cred(good).get_token(*SCOPES).token
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        cert_cred(other).get_token(*SCOPES)


def test_extension_and_flux_lifecycle_with_paging(arm: ArmDouble, pki: Pki) -> None:
    _, ext_client, flux_client = clients(arm, pki)
    rp = ("Microsoft.Kubernetes", "connectedClusters", CLUSTER)
    # A child of a cluster that is not there.
    with pytest.raises(ResourceNotFoundError, match="ParentResourceNotFound"):
        ext_client.extensions.get(RG, *rp, "flux")
    connect(arm)
    ext = ext_client.extensions.begin_create(
        RG, *rp, "flux", {"properties": {"extensionType": "microsoft.flux", "autoUpgradeMinorVersion": True}}
    ).result()
    assert ext["properties"]["provisioningState"] == "Succeeded"
    arm.config.compliance["cfg-2"] = Compliance(state="Non-Compliant", message="kustomization path not found")
    names = [f"cfg-{i}" for i in range(60)]
    for name in names:
        flux_client.flux_configurations.begin_create_or_update(RG, *rp, name, flux_body(name)).result()
    before = len(arm.requests(arm_only=True))
    listed = list(flux_client.flux_configurations.list(RG, *rp))
    pages = arm.requests(arm_only=True)[before:]
    assert sorted(c["name"] for c in listed) == sorted(names)
    assert len(pages) == 2  # 50 per page: one list, one nextLink
    states = {c["name"]: c["properties"]["complianceState"] for c in listed}
    assert states["cfg-2"] == "Non-Compliant" and states["cfg-1"] == "Compliant"
    bad = next(c for c in listed if c["name"] == "cfg-2")
    assert (
        bad["properties"]["statuses"][0]["statusConditions"][0]["message"] == "kustomization path not found"
    )
    # Delete: 202 + Location / Azure-AsyncOperation, then gone; deleting it again is a 204.
    flux_client.flux_configurations.begin_delete(RG, *rp, "cfg-0").result()
    with pytest.raises(ResourceNotFoundError):
        flux_client.flux_configurations.get(RG, *rp, "cfg-0")
    flux_client.flux_configurations.begin_delete(RG, *rp, "cfg-0").result()
    assert arm.requests(arm_only=True)[-1].status == 204


def test_pending_compliance_then_compliant(arm: ArmDouble, pki: Pki) -> None:
    _, _, flux_client = clients(arm, pki)
    connect(arm)
    rp = ("Microsoft.Kubernetes", "connectedClusters", CLUSTER)
    arm.config.default_compliance = Compliance(after=0.4)
    flux_client.flux_configurations.begin_create_or_update(RG, *rp, "c", flux_body("c")).result()
    assert flux_client.flux_configurations.get(RG, *rp, "c")["properties"]["complianceState"] == "Pending"
    time.sleep(0.5)
    assert flux_client.flux_configurations.get(RG, *rp, "c")["properties"]["complianceState"] == "Compliant"


def test_slow_operation_polls_and_conflicts(arm: ArmDouble, pki: Pki) -> None:
    _, ext_client, _ = clients(arm, pki)
    connect(arm)
    rp = ("Microsoft.Kubernetes", "connectedClusters", CLUSTER)
    arm.config.lro_seconds = 0.5
    body = {"properties": {"extensionType": "microsoft.flux"}}
    poller = ext_client.extensions.begin_create(RG, *rp, "flux", body)
    assert not poller.done()
    assert ext_client.extensions.get(RG, *rp, "flux")["properties"]["provisioningState"] == "Creating"
    with pytest.raises(ResourceExistsError, match="AnotherOperationInProgress"):
        ext_client.extensions.begin_create(RG, *rp, "flux", body)
    assert poller.result()["properties"]["provisioningState"] == "Succeeded"
    polls = [r for r in arm.requests() if r.path.startswith("/_operations/")]
    assert len(polls) >= 2


def test_failed_operation_raises(arm: ArmDouble, pki: Pki) -> None:
    _, ext_client, _ = clients(arm, pki)
    connect(arm)
    arm.config.lro_result = "Failed"
    with pytest.raises(HttpResponseError, match="failed"):
        ext_client.extensions.begin_create(
            RG, "Microsoft.Kubernetes", "connectedClusters", CLUSTER, "flux",
            {"properties": {"extensionType": "microsoft.flux"}},
        ).result()  # fmt: skip


@pytest.mark.fault("429 with Retry-After, then 503", "the SDK retries after Retry-After and succeeds")
def test_throttling_and_5xx_are_retried(arm: ArmDouble, pki: Pki) -> None:
    hybrid, _, _ = clients(arm, pki)
    connect(arm)
    arm.config.faults += [
        Fault(match="GET /subscriptions", status=429, retry_after=1, times=1),
        Fault(match="GET /subscriptions", status=503, times=1),
    ]
    started = time.monotonic()
    assert hybrid.connected_cluster.get(RG, CLUSTER).name == CLUSTER
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    statuses = [r.status for r in arm.requests(arm_only=True)]
    assert statuses == [429, 503, 200]


@pytest.mark.fault("404 on delete", "ResourceNotFoundError (a non-idempotent RP)")
def test_injected_404_on_delete(arm: ArmDouble, pki: Pki) -> None:
    hybrid, _, _ = clients(arm, pki)
    connect(arm)
    arm.config.faults.append(Fault(match="DELETE /subscriptions", status=404))
    with pytest.raises(ResourceNotFoundError):
        hybrid.connected_cluster.begin_delete(RG, CLUSTER).result()


def _raw(arm: ArmDouble, pki: Pki, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(arm.url + path, headers=headers, verify=str(pki.ca.cert), timeout=5)
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("query", "token", "status", "code"),
    [
        ("", "good", 400, "MissingApiVersionParameter"),
        ("?api-version=2019-01-01", "good", 400, "NoRegisteredProviderFound"),
        ("?api-version=2026-05-01", None, 401, "AuthenticationFailed"),
        ("?api-version=2026-05-01", "forged", 401, "InvalidAuthenticationToken"),
        ("?api-version=2026-05-01", "graph", 401, "InvalidAuthenticationToken"),
        ("?api-version=2026-05-01", "good", 404, "ResourceNotFound"),
    ],
)
def test_arm_rules(arm: ArmDouble, pki: Pki, query: str, token: str | None, status: int, code: str) -> None:
    cred = credential(arm, pki)
    tokens = {
        "good": cred.get_token(*SCOPES).token,
        "graph": cred.get_token("https://graph.microsoft.com/.default").token,
        "forged": "eyJhbGciOiJub25lIn0.e30.",
    }
    got = _raw(arm, pki, cluster_id(GUID_SUB, RG, CLUSTER) + query, tokens.get(token or ""))
    assert got[0] == status
    assert got[1]["error"]["code"] == code


def test_unknown_resource_group_and_subscription(arm: ArmDouble, pki: Pki) -> None:
    arm.config.resource_groups = {RG}
    arm.config.subscriptions = {GUID_SUB}
    hybrid, _, _ = clients(arm, pki)
    with pytest.raises(ResourceNotFoundError, match="ResourceGroupNotFound"):
        hybrid.connected_cluster.get("rg-missing", CLUSTER)
    other = ConnectedKubernetesClient(
        credential(arm, pki), "99999999-9999-9999-9999-999999999999", base_url=arm.url,
        credential_scopes=SCOPES, connection_verify=str(pki.ca.cert),
    )  # fmt: skip
    with pytest.raises(ResourceNotFoundError, match="SubscriptionNotFound"):
        other.connected_cluster.get(RG, CLUSTER)
