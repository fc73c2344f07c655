"""builder's Azure Resource Manager work (Day 2: destroy, rollout --rebuild-cluster) through the Azure SDK.

The service principal comes from the environment only, under azure-identity's own names (never a file in
the repository, never argv, never a log line):

    AZURE_TENANT_ID      tenant of the service principal (default: the fleet's `arc.tenant_id`)
    AZURE_CLIENT_ID      application (client) id
    AZURE_CLIENT_SECRET  its client secret

Test seams (never needed against Azure itself): `ARCBAKE_ARM_ENDPOINT` replaces the Resource Manager URL,
`ARCBAKE_AZURE_AUTHORITY` the Entra ID authority host (instance discovery is then off, as the SDK requires
for a private authority), and `ARCBAKE_AZURE_CA_BUNDLE` the CA bundle both are verified with. They are read
by firstboot's one reader (`firstboot.arm.Endpoints`), which refuses any URL that is not https on loopback:
the environment cannot send the service principal's secret to another host.

Throttling (429 with Retry-After) and 5xx are retried by azure-core's retry policy; long-running deletes
are polled to the end; a 404 on delete means "already gone" (idempotent destroy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from firstboot.arm import Endpoints, describe
from firstboot.step import StepFailure

LOG = logging.getLogger(__name__)

ENV_TENANT = "AZURE_TENANT_ID"
ENV_CLIENT = "AZURE_CLIENT_ID"
ENV_SECRET = "AZURE_CLIENT_SECRET"  # noqa: S105 - the name of a variable, not a value
# Seconds between polls of a long-running operation that sends no Retry-After.
POLL_SECONDS = 5


class AzureError(Exception):
    """An Azure call failed; one line, no secret, no traceback at the CLI."""


@dataclass(frozen=True)
class AzureSettings:
    """Who builder signs in as and where (the secret is kept out of repr and messages)."""

    client_id: str
    tenant_id: str
    client_secret: str = field(repr=False)
    endpoints: Endpoints = field(default_factory=Endpoints)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], default_tenant: str | None = None) -> AzureSettings:
        """Read the service principal and endpoints from `environ`; AzureError naming every missing variable,
        or a test seam that is not loopback https."""
        tenant = environ.get(ENV_TENANT) or default_tenant or ""
        missing = [name for name in (ENV_CLIENT, ENV_SECRET) if not environ.get(name)]
        if not tenant:
            missing.insert(0, ENV_TENANT)
        if missing:
            raise AzureError(
                f"the Azure service principal is not configured: set {', '.join(missing)} in the environment "
                "(or use --keep-arc to leave Azure alone)"
            )
        try:
            endpoints = Endpoints.from_env(environ)
        except StepFailure as exc:
            raise AzureError(f"{exc.message}: {exc.remedy}") from None
        return cls(
            client_id=environ[ENV_CLIENT],
            tenant_id=tenant,
            client_secret=environ[ENV_SECRET],
            endpoints=endpoints,
        )

    def _transport(self) -> dict[str, Any]:
        ca_bundle = self.endpoints.ca_bundle
        return {"connection_verify": ca_bundle} if ca_bundle else {}

    def credential(self) -> Any:
        """An azure-identity ClientSecretCredential for these settings."""
        from azure.identity import ClientSecretCredential

        kwargs: dict[str, Any] = self._transport()
        if self.endpoints.authority:
            kwargs.update(authority=self.endpoints.authority, disable_instance_discovery=True)
        return ClientSecretCredential(self.tenant_id, self.client_id, self.client_secret, **kwargs)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an azure-mgmt client: endpoint, scope and CA overrides, LRO poll interval."""
        # Only the URL moves under the test seam: the token is still asked for Resource Manager's audience.
        return {"polling_interval": POLL_SECONDS, "base_url": self.endpoints.arm, **self._transport()}


@dataclass(frozen=True)
class ClusterRef:
    """One Arc connected cluster: where it is in Azure."""

    subscription_id: str
    resource_group: str
    name: str

    def __str__(self) -> str:
        return f"{self.resource_group}/{self.name}"


class ArcClusters:
    """Connected-cluster operations as one service principal (one client per subscription)."""

    def __init__(self, settings: AzureSettings) -> None:
        self.settings = settings
        self._credential = settings.credential()
        self._clients: dict[str, Any] = {}

    def _client(self, subscription_id: str) -> Any:
        from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient

        if subscription_id not in self._clients:
            self._clients[subscription_id] = ConnectedKubernetesClient(
                self._credential, subscription_id, **self.settings.client_kwargs()
            )
        return self._clients[subscription_id]

    def exists(self, ref: ClusterRef) -> bool:
        """True when the connected cluster exists (any provisioning state)."""
        from azure.core.exceptions import AzureError as SdkError
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._client(ref.subscription_id).connected_cluster.get(ref.resource_group, ref.name)
        except ResourceNotFoundError:
            return False
        except SdkError as exc:
            raise AzureError(f"reading connected cluster {ref}: {describe(exc)}") from None
        return True

    def delete(self, ref: ClusterRef) -> bool:
        """Delete the connected cluster (its extensions and Flux configurations go with it) and wait for
        the operation to finish; False when it was already gone (404)."""
        from azure.core.exceptions import AzureError as SdkError
        from azure.core.exceptions import ResourceNotFoundError

        # ARM answers a DELETE of a missing resource with 204 too: ask first, to report what was there.
        if not self.exists(ref):
            return False
        try:
            clusters = self._client(ref.subscription_id).connected_cluster
            clusters.begin_delete(ref.resource_group, ref.name).result()
        except ResourceNotFoundError:
            return False
        except SdkError as exc:
            raise AzureError(f"deleting connected cluster {ref}: {describe(exc)}") from None
        LOG.info("deleted connected cluster %s", ref)
        return True

    def close(self) -> None:
        """Close every client's transport and the credential."""
        for client in self._clients.values():
            client.close()
        self._credential.close()

    def __enter__(self) -> ArcClusters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
