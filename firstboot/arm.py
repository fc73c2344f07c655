"""Azure Resource Manager for the arc and flux steps, through the Azure SDK for Python in this process.

One `ArmSession` per service principal: an azure-identity credential built from the secrets file (client
secret, or certificate PEM with its key; never on a command line, never in a child's environment) and the
three management clients (`azure-mgmt-hybridkubernetes` for the connected cluster,
`azure-mgmt-kubernetesconfiguration-extensions` for the Flux extension,
`azure-mgmt-kubernetesconfiguration-fluxconfigurations` for the Flux configurations). The arc and flux steps
share it (one token for both). Writes are sent without the SDK's long-running-operation poller: the steps
watch what they need themselves (provisioningState, pods, compliance) with one poll schedule.

Where it talks (production: Azure's public cloud, through `proxy.https_proxy` when one is configured):

    Resource Manager   https://management.azure.com
    Entra ID           https://login.microsoftonline.com

Test seams, read here for builder's Day 2 too (builder/azure_arm.py), and only ever loopback HTTPS: a
value naming another host is refused (a PermanentFailure; an AzureError in builder), so the environment
cannot redirect a service principal's credentials elsewhere.

    ARCBAKE_ARM_ENDPOINT      Resource Manager URL (e.g. https://127.0.0.1:8443, the ARM double)
    ARCBAKE_AZURE_AUTHORITY   Entra ID authority (instance discovery is then off, as the SDK requires)
    ARCBAKE_AZURE_CA_BUNDLE   CA bundle both are verified with

Errors are classified with the az rules of `firstboot.azcli` (AADSTS codes, ResourceGroupNotFound,
AuthorizationFailed, ...): permanent ones fail the step at once with their remedy; throttling (429),
5xx, 409 (another operation in progress) and network errors are transient.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from firstboot import azcli, kube
from firstboot.contract import ArcAuth, ArcConfig
from firstboot.step import CheckResult, Context, PermanentFailure, StepFailure, TransientFailure

LOG = logging.getLogger(__name__)
# The SDK logs every request and response header at INFO: the journal gets firstboot's lines, not those.
logging.getLogger("azure").setLevel(logging.WARNING)
logging.getLogger("msal").setLevel(logging.WARNING)
T = TypeVar("T")

ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
ENV_ENDPOINT = "ARCBAKE_ARM_ENDPOINT"
ENV_AUTHORITY = "ARCBAKE_AZURE_AUTHORITY"
ENV_CA_BUNDLE = "ARCBAKE_AZURE_CA_BUNDLE"
CLUSTER_RP = "Microsoft.Kubernetes"
CLUSTER_TYPE = "connectedClusters"
# Per request: the SDK's own retries cover a throttled or failed call; the engine retries the step.
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 4,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 30,
    "connection_timeout": 20,
    "read_timeout": 60,
}
_LOOPBACK_NAMES = {"localhost"}
# provisioningState values of a resource that is still being created or changed.
IN_PROGRESS = frozenset({"creating", "accepted", "provisioning", "updating", "running", "pending"})


class NoCredentials(PermanentFailure):
    """The service principal's material is not in the secrets: never delivered, or retired once onboarding
    was done (only the generation is kept). A read-only check cannot ask Azure then: inconclusive."""


NO_CREDENTIALS_REMEDY = (
    "Azure is read with the service principal only while its secrets are held (until onboarding is done); "
    "afterwards check the resource in the Azure portal, or deliver a new generation (`builder rotate`)"
)


def inconclusive(exc: NoCredentials, what: str) -> CheckResult:
    """A check's answer when Azure cannot be read for lack of credentials."""
    return CheckResult(False, f"{what} not read from Azure: {exc.message}", exc.remedy, conclusive=False)


@dataclass(frozen=True)
class Endpoints:
    """Where Resource Manager and Entra ID are, and the CA to verify them with (None: the default)."""

    arm: str = ARM_ENDPOINT
    authority: str | None = None
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Endpoints:
        """The production endpoints, or the loopback test seams; PermanentFailure for anything else."""
        arm = environ.get(ENV_ENDPOINT) or ""
        authority = environ.get(ENV_AUTHORITY) or ""
        for name, value in ((ENV_ENDPOINT, arm), (ENV_AUTHORITY, authority)):
            if value and not _is_loopback_https(value):
                raise PermanentFailure(
                    f"{name}={_shown(value)!r} is not an https URL on loopback",
                    f"{name} is a test seam for a loopback double only: unset it",
                )
        return cls(arm or ARM_ENDPOINT, authority or None, environ.get(ENV_CA_BUNDLE) or None)

    def hosts(self) -> list[str]:
        """The host names the SDK connects to (for the documentation and the proxy bypass)."""
        authority = self.authority or "https://login.microsoftonline.com"
        return [urllib.parse.urlsplit(u).hostname or "" for u in (self.arm, authority)]


def _shown(url: str) -> str:
    """`url` for a message: user:password@ (a secret a refused URL may carry) masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _is_loopback_https(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" or parts.username or parts.password:
        return False
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxies(env: Mapping[str, str], endpoints: Endpoints) -> dict[str, str]:
    """The proxy for the SDK's requests (from the proxy step's environment), none for NO_PROXY hosts."""
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if not proxy:
        return {}
    no_proxy = [n.strip().lstrip(".") for n in (env.get("NO_PROXY") or env.get("no_proxy") or "").split(",")]
    bypass = all(any(h == n or h.endswith("." + n) for n in no_proxy if n) for h in endpoints.hosts())
    return {} if bypass else {"https": proxy}


class ArmSession:
    """The credential and the management clients of one service principal (lazily built, thread-safe)."""

    def __init__(self, ctx: Context, arc: ArcConfig, endpoints: Endpoints) -> None:
        self.arc = arc
        self.endpoints = endpoints
        self._transport: dict[str, Any] = dict(CLIENT_OPTIONS)
        ca = endpoints.ca_bundle or _system_bundle(ctx)
        if ca:
            self._transport["connection_verify"] = ca
        proxies = _proxies(ctx.env, endpoints)
        if proxies:
            self._transport["proxies"] = proxies
        self.credential = _credential(ctx, arc, endpoints, self._transport)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, kind: str) -> Any:
        with self._lock:
            if kind not in self._clients:
                self._clients[kind] = _clients()[kind](
                    self.credential,
                    self.arc.subscription_id,
                    base_url=self.endpoints.arm,
                    # The token's audience is Resource Manager's, wherever the endpoint is (a test seam).
                    credential_scopes=[ARM_SCOPE],
                    **self._transport,
                )
            return self._clients[kind]

    # -- the connected cluster -----------------------------------------------------------------------------
    def cluster(self) -> dict[str, Any] | None:
        """The connected cluster (REST shape), None when it does not exist."""
        arc = self.arc
        clusters = self._client("hybrid").connected_cluster
        return self.get(
            f"connected cluster {arc.cluster_name}", clusters.get, arc.resource_group, arc.cluster_name
        )

    def delete_cluster(self, ctx: Context, timeout: float) -> bool:
        """DELETE the connected cluster (its extensions and Flux configurations go with it) and wait until
        Resource Manager no longer has it; False when it was already gone."""
        from azure.core.exceptions import ResourceNotFoundError

        arc = self.arc
        clusters = self._client("hybrid").connected_cluster
        what = f"deleting connected cluster {arc.cluster_name}"
        try:
            self.call(
                what,
                lambda: clusters.begin_delete(arc.resource_group, arc.cluster_name, polling=False),
                passthrough=ResourceNotFoundError,
            )
        except ResourceNotFoundError:
            return False
        deadline = time.monotonic() + timeout
        for interval in poll_intervals(ctx):
            if self.cluster() is None:
                return True
            ctx.progress(f"waiting for connected cluster {arc.cluster_name} to be deleted")
            if time.monotonic() >= deadline or ctx.cancel.wait(interval):
                break
        raise TransientFailure(f"{what}: still there after {timeout:g} s", "the next attempt checks again")

    # -- the Flux extension --------------------------------------------------------------------------------
    def _cluster_args(self) -> tuple[str, str, str, str]:
        return (self.arc.resource_group, CLUSTER_RP, CLUSTER_TYPE, self.arc.cluster_name)

    def extension(self, name: str) -> dict[str, Any] | None:
        """The cluster extension `name`, None when absent."""
        ops = self._client("extensions").extensions
        return self.get(f"extension {name}", ops.get, *self._cluster_args(), name)

    def create_extension(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the extension; the answer of the PUT (provisioningState Creating, usually)."""
        ops = self._client("extensions").extensions
        return self.write(f"creating extension {name}", ops.begin_create, *self._cluster_args(), name, body)

    # -- Flux configurations -------------------------------------------------------------------------------
    def configurations(self) -> dict[str, dict[str, Any]]:
        """Every Flux configuration of the cluster by name: one list (paged by Resource Manager)."""
        ops = self._client("flux").flux_configurations
        items = self.call("listing Flux configurations", lambda: list(ops.list(*self._cluster_args())))
        return {str(doc["name"]): doc for doc in (_plain(i) for i in items)}

    def create_configuration(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT one Flux configuration; the answer of the PUT."""
        ops = self._client("flux").flux_configurations
        return self.write(
            f"creating Flux configuration {name}",
            ops.begin_create_or_update,
            *self._cluster_args(),
            name,
            body,
        )

    # -- plumbing ------------------------------------------------------------------------------------------
    def get(self, what: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """A GET; None for ResourceNotFound (a missing resource group or parent is an error)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _plain(self.call(what, lambda: fn(*args), passthrough=ResourceNotFoundError))
        except ResourceNotFoundError as exc:
            if _error_code(exc) in ("ResourceNotFound", "NotFound", ""):
                return None
            raise classify(exc, f"reading {what}") from None

    def write(self, what: str, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        """A PUT sent without the SDK's operation poller (the caller watches the resource itself)."""
        poller = self.call(what, lambda: fn(*args, polling=False))
        return _plain(self.call(what, poller.result))

    def call(self, what: str, fn: Callable[[], T], passthrough: type[BaseException] | None = None) -> T:
        """Run one SDK call; its exceptions become the classified step failures."""
        from azure.core.exceptions import AzureError

        try:
            return fn()
        except AzureError as exc:
            if passthrough is not None and isinstance(exc, passthrough):
                raise
            raise classify(exc, what) from None

    def close(self) -> None:
        """Close the clients' transports and the credential."""
        for client in self._clients.values():
            client.close()
        self.credential.close()


def _clients() -> dict[str, Callable[..., Any]]:
    """The client classes, imported when first needed (doctor's and status's paths do not pay for them)."""
    from azure.mgmt.hybridkubernetes import ConnectedKubernetesClient
    from azure.mgmt.kubernetesconfiguration.extensions import KubernetesConfigurationExtensionsMgmtClient
    from azure.mgmt.kubernetesconfiguration.fluxconfigurations import (
        KubernetesConfigurationFluxConfigurationsMgmtClient,
    )

    return {
        "hybrid": ConnectedKubernetesClient,
        "extensions": KubernetesConfigurationExtensionsMgmtClient,
        "flux": KubernetesConfigurationFluxConfigurationsMgmtClient,
    }


_PREWARM_LOCK = threading.Lock()
# Off in the test suite's own process (tests/conftest.py): a step run in-process must not sign in to the
# real Entra ID in the background (nor az, firstboot.steps.arc.begin); `firstboot run` as a program (the
# worlds) signs in early as in the field.
PREWARM_SIGN_IN = True
_prewarm_thread: threading.Thread | None = None


def prewarm(ctx: Context | None = None) -> None:
    """Import azure-identity and the management clients in a background thread (once per process) and,
    given the step's context, sign in: the seconds the imports and Entra ID's token take overlap a wait
    (K3s starting) instead of adding to the arc step. Whatever fails here, the arc step meets again and
    reports (this thread only logs it)."""
    global _prewarm_thread
    with _PREWARM_LOCK:
        if _prewarm_thread is None:
            kube.shared_http_stack()  # in this thread first: see its docstring
            _prewarm_thread = threading.Thread(target=_prewarm, args=(ctx,), name="arm-prewarm", daemon=True)
            _prewarm_thread.start()


def wait_prewarmed() -> None:
    """Until the background imports and sign-in `prewarm` started have finished (at once when none did)."""
    with _PREWARM_LOCK:
        thread = _prewarm_thread
    if thread is not None:
        thread.join()


def _prewarm(ctx: Context | None) -> None:
    import azure.identity  # noqa: F401 - imported for its side effect (module cache)

    _clients()
    if ctx is None or not PREWARM_SIGN_IN:
        return
    try:
        sign_in(ctx)
    except StepFailure as exc:
        LOG.debug("early sign-in did not work (the arc step will say why): %s", exc.message)


def _system_bundle(ctx: Context) -> str | None:
    """With a proxy CA installed, the system bundle that includes it (requests trusts certifi otherwise)."""
    if ctx.config is not None and ctx.config.proxy.ca_bundle_pem:
        bundle = ctx.path(azcli.SYSTEM_CA_BUNDLE)
        return str(bundle) if bundle.exists() else None
    return None


def _credential(ctx: Context, arc: ArcConfig, endpoints: Endpoints, transport: dict[str, Any]) -> Any:
    """azure-identity's credential for the service principal, from the secrets (in memory only)."""
    from azure.identity import CertificateCredential, ClientSecretCredential

    kwargs: dict[str, Any] = {k: v for k, v in transport.items() if k in ("connection_verify", "proxies")}
    kwargs.update({k: v for k, v in transport.items() if k.startswith("retry_")})
    if endpoints.authority:
        kwargs.update(authority=endpoints.authority, disable_instance_discovery=True)
    secrets = ctx.secrets
    if arc.auth is ArcAuth.CERTIFICATE:
        pem = secrets.sp_certificate_pem if secrets else None
        if pem is None:
            raise NoCredentials("no service principal certificate in the secrets", NO_CREDENTIALS_REMEDY)
        try:
            return CertificateCredential(
                arc.tenant_id, arc.client_id, certificate_data=pem.get_secret_value().encode(), **kwargs
            )
        except ValueError:
            # The exception may quote the material: name the problem only.
            raise PermanentFailure(
                "the service principal certificate could not be loaded (PEM with certificate and key?)",
                "fix sp_certificate_pem; " + azcli.REMEDY_REDEPLOY,
            ) from None
    secret = secrets.sp_secret if secrets else None
    if secret is None:
        raise NoCredentials("no service principal secret in the secrets", NO_CREDENTIALS_REMEDY)
    return ClientSecretCredential(arc.tenant_id, arc.client_id, secret.get_secret_value(), **kwargs)


_SESSIONS: dict[tuple[str, ...], ArmSession] = {}
_SESSIONS_LOCK = threading.Lock()


def session(ctx: Context) -> ArmSession:
    """The session for the config's service principal (shared by the arc and flux steps of one process).

    Keyed by the principal, the endpoints and a digest of the credential, so rotated secrets get a new one.
    """
    arc = azcli.require_arc(ctx.require_config())
    endpoints = Endpoints.from_env(ctx.env)
    secrets = ctx.secrets
    material = None
    if secrets is not None:
        material = secrets.sp_certificate_pem if arc.auth is ArcAuth.CERTIFICATE else secrets.sp_secret
    digest = hashlib.sha256(material.get_secret_value().encode()).hexdigest() if material else ""
    key = (arc.tenant_id, arc.client_id, arc.subscription_id, endpoints.arm, str(endpoints.authority), digest)
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = ArmSession(ctx, arc, endpoints)
        return _SESSIONS[key]


def sign_in(ctx: Context) -> None:
    """A Resource Manager token for the config's service principal: Entra ID checks the credentials
    (rejected ones are a PermanentFailure naming the AADSTS code). No az process."""
    held = session(ctx)
    held.call("signing in to Entra ID", lambda: held.credential.get_token(ARM_SCOPE))


def reset_sessions() -> None:
    """Close and forget every session (tests; a long-lived process after a rotation)."""
    with _SESSIONS_LOCK:
        for held in _SESSIONS.values():
            held.close()
        _SESSIONS.clear()


def _plain(value: Any) -> dict[str, Any]:
    """A model of the generated clients as the REST JSON (camelCase keys), or {}."""
    if value is None:
        return {}
    if hasattr(value, "as_dict"):
        out: dict[str, Any] = value.as_dict()
        return out
    return dict(value) if isinstance(value, Mapping) else {}


def _error_code(exc: BaseException) -> str:
    error = getattr(exc, "error", None)
    return str(getattr(error, "code", "") or "")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(exc, "status_code", None) or getattr(response, "status_code", None)
    return int(code) if code else None


def describe(exc: BaseException) -> str:
    """One line about an SDK error: status, ARM code and message (never a request body or header)."""
    error = getattr(exc, "error", None)
    message = str(getattr(error, "message", "") or getattr(exc, "message", "") or exc)
    first = " ".join(message.split())[:500]
    status, code = _status(exc), _error_code(exc)
    prefix = " ".join(p for p in (f"HTTP {status}" if status else "", f"({code})" if code else "") if p)
    return f"{prefix} {first}".strip()


def classify(exc: BaseException, what: str) -> StepFailure:
    """The Permanent- or TransientFailure for an SDK error, with the az rules' meanings and remedies."""
    text = f"{_error_code(exc)} {describe(exc)}"
    for rule in azcli.PERMANENT:
        if rule.pattern.search(text):
            return PermanentFailure(f"{what} failed: {rule.meaning}: {describe(exc)}", rule.remedy)
    status = _status(exc)
    if status in (400, 401, 403):
        return PermanentFailure(
            f"{what} failed: {describe(exc)}",
            "check the arc section of the fleet file and the service principal's role assignments",
        )
    return TransientFailure(
        f"{what} failed: {describe(exc)}",
        "a transient Azure or network error: it is retried; if it persists check the proxy and the "
        "connectivity link (`firstboot doctor`)",
    )


def wait_settled(
    ctx: Context, show: Callable[[], dict[str, Any] | None], what: str, timeout: float
) -> dict[str, Any] | None:
    """`show()` until the resource is absent or no longer in progress (an interrupted run may still be
    creating it: its result is waited for, never created twice). TransientFailure at the timeout."""
    deadline = time.monotonic() + timeout
    for interval in poll_intervals(ctx):
        doc = show()
        state = provisioning_state(doc)
        if doc is None or state not in IN_PROGRESS:
            return doc
        ctx.progress(f"{what} is being created (provisioningState {state}); waiting")
        if time.monotonic() >= deadline or ctx.cancel.wait(interval):
            break
    raise TransientFailure(
        f"{what} is still being created (provisioningState {state})", "wait: the next attempt checks again"
    )


def provisioning_state(doc: Mapping[str, Any] | None) -> str:
    """The lower-cased provisioningState of a resource ('' when absent)."""
    props = (doc or {}).get("properties") or {}
    return str(props.get("provisioningState", "")).lower()


def poll_intervals(
    ctx: Context, cap: float = 5.0, first: float = 0.2, fast_polls: int = 25
) -> Iterator[float]:
    """Waits between polls of Azure, which has no watch: every `first` seconds for the first `fast_polls`
    (a few seconds: what is ready soon is seen within 0.2 s, not a back-off step later), then doubling up
    to `cap` (what takes minutes costs a read every `cap` seconds)."""
    polls = 0
    while True:
        steps = polls - fast_polls
        yield (first if steps < 0 else min(cap, first * 2 ** (steps // 2 + 1))) * ctx.time_scale
        polls += 1
