"""An Azure Resource Manager + Entra ID (token) double over HTTPS on loopback, for the real Azure SDK.

It speaks what `azure-identity` (MSAL) and the `azure-mgmt-*` clients send, and enforces ARM's rules:

Entra ID (MSAL 1.39 `msal/authority.py` + `oauth2cli/oauth2.py`, the client-credentials grant):
    GET  /{tenant}/v2.0/.well-known/openid-configuration   -> authorization_endpoint, token_endpoint, issuer
    POST /{tenant}/oauth2/v2.0/token  grant_type=client_credentials, client_id, scope=<resource>/.default and
         client_secret, or client_assertion (a JWT signed PS256 with x5t#S256, or RS256 with x5t, by the
         certificate's key; MSAL application.py `_build_client`) -> access_token, expires_in.
    Refusals shaped like Entra's (JSON `error`, `error_description` starting with the AADSTS code,
    `error_codes`): unknown tenant AADSTS90002 (400), unknown client AADSTS700016 (400), wrong secret
    AADSTS7000215 (401 invalid_client), bad assertion AADSTS700027 (401), scope not `.default` AADSTS70011.

ARM (resource paths and bodies from Azure/azure-rest-api-specs, the API versions the pinned SDKs send):
    Microsoft.Kubernetes/connectedClusters      2026-05-01  (azure-mgmt-hybridkubernetes 2.0.0)
        specification/hybridkubernetes/resource-manager/Microsoft.Kubernetes/HybridKubernetes/
        examples/2026-05-01/CreateCluster_KindExample.json
    Microsoft.KubernetesConfiguration/extensions 2025-03-01
        (azure-mgmt-kubernetesconfiguration-extensions 1.0.0)
        specification/kubernetesconfiguration/resource-manager/Microsoft.KubernetesConfiguration/
        extensions/stable/2025-03-01/extensions.json
    Microsoft.KubernetesConfiguration/fluxConfigurations 2025-04-01 (...-fluxconfigurations 1.0.0)
        .../fluxConfigurations/stable/2025-04-01/fluxconfiguration.json, examples/CreateFluxConfiguration.json
        (201 + Azure-AsyncOperation, `statuses[]`, `complianceState`), ListFluxConfigurations.json (nextLink)
    Rules (Azure/azure-resource-manager-rpc v1.0 resource-api-reference.md and async-api-reference.md):
    - `api-version` is required (400 MissingApiVersionParameter) and must be one the type registers
      (400 NoRegisteredProviderFound);
    - `Authorization: Bearer` must carry a token this double issued for the ARM audience, unexpired
      (401 AuthenticationFailed / InvalidAuthenticationToken, with WWW-Authenticate);
    - unknown subscription 404 SubscriptionNotFound, resource group 404 ResourceGroupNotFound, resource
      404 ResourceNotFound, a child of a missing cluster 404 ParentResourceNotFound;
    - PUT creates with 201 + `Azure-AsyncOperation` (+ `Location` on DELETE, 202); the operation's status
      document (`status` InProgress -> Succeeded/Failed) is served at that URL; a second write while an
      operation on the same resource runs is 409 Conflict (AnotherOperationInProgress);
    - DELETE of a missing resource is 204 (idempotent);
    - lists page with `nextLink` (absolute, carrying api-version and `$skipToken`).

Faults (`faults=[Fault(...)]` or `/_double/faults`): a status (429 with Retry-After, 500, 503, 404) for the
N first requests whose "METHOD path" contains `match`; `delay` before answering; slow operations
(`lro_seconds`); a final operation status (`lro_result="Failed"`).

Admin endpoints (no token; tests and the `az` double use them): `GET /_double/requests`,
`POST /_double/resources` `{"id": ARM id, "properties": {...}}` (what `az connectedk8s connect` PUTs),
`GET /_double/resources`, `POST /_double/faults`.

Standalone: `python3 tests/doubles/arm_double.py --cert C --key K --config cfg.json --port 0 --url-file F`.
Stdlib only, except `cryptography` for certificate assertions.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import signal
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
ARM_AUDIENCE = "https://management.azure.com"
# The API versions the pinned SDKs send (see the module docstring), plus the ones az 2.67's extensions use.
API_VERSIONS: dict[str, frozenset[str]] = {
    "connectedclusters": frozenset({"2026-05-01", "2024-12-01-preview", "2024-01-01", "2021-10-01"}),
    "extensions": frozenset({"2025-03-01", "2023-05-01", "2022-11-01"}),
    "fluxconfigurations": frozenset({"2025-04-01", "2024-11-01", "2023-05-01", "2022-11-01"}),
}
TYPE_NAMES = {
    "connectedclusters": "Microsoft.Kubernetes/connectedClusters",
    "extensions": "Microsoft.KubernetesConfiguration/extensions",
    "fluxconfigurations": "Microsoft.KubernetesConfiguration/fluxConfigurations",
}
CLUSTER_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kubernetes/"
    r"connectedClusters(?:/(?P<cluster>[^/]+))?$",
    re.IGNORECASE,
)
CHILD_RE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kubernetes/"
    r"connectedClusters/(?P<cluster>[^/]+)/providers/Microsoft\.KubernetesConfiguration/"
    r"(?P<kind>extensions|fluxConfigurations)(?:/(?P<name>[^/]+))?(?:/operations/(?P<op>[^/]+))?$",
    re.IGNORECASE,
)
OPERATION_RE = re.compile(r"^/_operations/(?P<op>[^/]+)(?P<location>/location)?$")
PAGE_SIZE = 50
TOKEN_LIFETIME = 3599
# Seconds between two settle rounds of the ticker (operations done on time, hooks fired).
SETTLE_TICK = 0.01


@dataclass
class Fault:
    """Answer `status` (with an ARM error `code`) to the first `times` requests matching `match`.

    `match` is a substring of "METHOD /path" (e.g. "PUT /subscriptions", "fluxConfigurations", "POST /t1/").
    `times=0` means every matching request. `status=0` only delays (`delay` seconds) and then answers.
    """

    match: str
    status: int = 503
    times: int = 1
    retry_after: int | None = None
    code: str = ""
    delay: float = 0.0
    message: str = ""
    used: int = 0

    def body(self) -> JSON:
        code = self.code or {
            429: "TooManyRequests",
            404: "ResourceNotFound",
            409: "Conflict",
            500: "InternalServerError",
        }.get(self.status, "ServiceUnavailable")
        return {"error": {"code": code, "message": self.message or f"injected fault {self.status} {code}"}}


@dataclass
class Compliance:
    """What a Flux configuration's complianceState becomes `after` seconds past its creation."""

    state: str = "Compliant"
    after: float = 0.0
    message: str = ""


@dataclass
class ArmConfig:
    """The double's world: the one tenant, the known principals, subscriptions and resource groups."""

    tenant: str = "00000000-0000-0000-0000-0000000000aa"
    # client id -> secret (str) or the PEM certificate whose key signs its assertions (a "-----BEGIN").
    principals: dict[str, str] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)  # empty: any subscription
    resource_groups: set[str] = field(default_factory=set)  # empty: any resource group
    location: str = "westeurope"
    lro_seconds: float = 0.0  # how long every operation stays InProgress
    # ... per resource type ("connectedclusters", "extensions", "fluxconfigurations"), overriding lro_seconds
    lro_type_seconds: dict[str, float] = field(default_factory=dict)
    lro_result: str = "Succeeded"
    retry_after: int | None = None  # Retry-After of operation responses (None: the client's own interval)
    compliance: dict[str, Compliance] = field(default_factory=dict)  # per Flux configuration name
    default_compliance: Compliance = field(default_factory=Compliance)
    faults: list[Fault] = field(default_factory=list)
    # Called (in the server thread) with each resource whose create or update has just succeeded: a world
    # makes the Flux controllers' pods appear when the extension is installed.
    on_created: Callable[[JSON], None] | None = None

    @classmethod
    def from_mapping(cls, doc: JSON) -> ArmConfig:
        """From a JSON document (the standalone `--config`)."""
        return cls(
            tenant=doc.get("tenant", cls.tenant),
            principals=dict(doc.get("principals") or {}),
            subscriptions=set(doc.get("subscriptions") or ()),
            resource_groups=set(doc.get("resource_groups") or ()),
            lro_seconds=float(doc.get("lro_seconds", 0.0)),
            lro_type_seconds={k.lower(): float(v) for k, v in (doc.get("lro_type_seconds") or {}).items()},
            lro_result=str(doc.get("lro_result", "Succeeded")),
            retry_after=doc.get("retry_after"),
            compliance={k: Compliance(**v) for k, v in (doc.get("compliance") or {}).items()},
            faults=[Fault(**f) for f in doc.get("faults") or ()],
        )


@dataclass
class Operation:
    """A long-running operation: its resource, kind and when it completes."""

    op_id: str
    resource_id: str
    method: str
    done_at: float
    result: str
    applied: bool = False


@dataclass
class Logged:
    """One request as the double saw it."""

    method: str
    path: str
    api_version: str | None
    status: int
    client_id: str | None


class ArmError(Exception):
    """An HTTP error answer in ARM's shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: JSON = {"error": {"code": code, "message": message}}
        self.headers = headers or {}


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(pem: str, algorithm: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem)
    digest = hashlib.new(algorithm, der).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class ArmState:
    """Resources, operations, tokens and the request log, behind one lock."""

    def __init__(self, config: ArmConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.resources: dict[str, JSON] = {}  # lower-cased id -> resource document
        self.settled_at: dict[str, float] = {}  # when each resource's last write succeeded
        self.operations: dict[str, Operation] = {}
        self.tokens: dict[str, tuple[str, str, float]] = {}  # token -> (client, audience, expiry)
        self.requests: list[Logged] = []
        self.hook_errors: list[str] = []  # what `on_created` raised (tests assert it stays empty)
        self.base_url = ""

    # -- operations ----------------------------------------------------------------------------------------
    def settle(self) -> None:
        """Apply every operation whose time has come (creation/deletion becomes visible)."""
        now = time.monotonic()
        for op in self.operations.values():
            if op.applied or now < op.done_at:
                continue
            op.applied = True
            key = op.resource_id.lower()
            doc = self.resources.get(key)
            if op.method == "DELETE":
                if op.result == "Succeeded":
                    self.resources.pop(key, None)
                elif doc is not None:
                    doc["properties"]["provisioningState"] = "Failed"
            elif doc is not None:
                doc["properties"]["provisioningState"] = op.result
                self.settled_at[key] = now
                if doc["type"] == TYPE_NAMES["connectedclusters"] and op.result == "Succeeded":
                    doc["properties"]["connectivityStatus"] = "Connected"
                if op.result == "Succeeded" and self.config.on_created is not None:
                    try:
                        self.config.on_created(json.loads(json.dumps(doc)))
                    except Exception as exc:  # noqa: BLE001 - a test's hook must not stop the double
                        self.hook_errors.append(f"{type(exc).__name__}: {exc}")

    def running(self, resource_id: str) -> Operation | None:
        """The operation still running on a resource, if any."""
        for op in self.operations.values():
            if op.resource_id.lower() == resource_id.lower() and not op.applied:
                return op
        return None

    def start(self, resource_id: str, kind: str, method: str) -> Operation:
        """A new operation on `resource_id`, done after the configured seconds for its type."""
        seconds = self.config.lro_type_seconds.get(kind, self.config.lro_seconds)
        op = Operation(
            uuid.uuid4().hex, resource_id, method, time.monotonic() + seconds, self.config.lro_result
        )
        self.operations[op.op_id] = op
        return op

    def put_resource(self, resource_id: str, props: JSON, location: str | None, tags: JSON | None) -> None:
        """Place a Succeeded resource directly (what `az connectedk8s connect` leaves behind)."""
        match = CLUSTER_RE.match(resource_id) or CHILD_RE.match(resource_id)
        if match is None:
            raise ArmError(400, "InvalidResourceId", resource_id)
        kind = (match.groupdict().get("kind") or "connectedClusters").lower()
        name = resource_id.rstrip("/").rsplit("/", 1)[1]
        doc: JSON = {
            "id": resource_id,
            "name": name,
            "type": TYPE_NAMES[kind],
            "properties": {"provisioningState": "Succeeded", **props},
        }
        if kind == "connectedclusters":
            doc["location"] = location or self.config.location
            doc["tags"] = tags or {}
            doc["properties"].setdefault("connectivityStatus", "Connected")
        self.resources[resource_id.lower()] = doc
        self.settled_at[resource_id.lower()] = time.monotonic()

    def compliance(self, name: str, resource_id: str) -> Compliance | None:
        """The Flux configuration's compliance now (None while still Pending)."""
        rule = self.config.compliance.get(name, self.config.default_compliance)
        started = self.settled_at.get(resource_id.lower(), 0.0)
        return rule if time.monotonic() - started >= rule.after else None


class Handler(BaseHTTPRequestHandler):
    """One request (HTTP/1.1 keep-alive, as the SDK's requests session expects)."""

    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without TCP_NODELAY each answer waits for a delayed ACK (40 ms).
    disable_nagle_algorithm = True
    server: ArmServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is `state.requests`."""

    @property
    def state(self) -> ArmState:
        return self.server.state

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- plumbing ------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: JSON | None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = urllib.parse.unquote(url.path)
        body = self._body()
        self.client_id: str | None = None
        doc: JSON | None
        try:
            status, doc, headers = self._answer(method, path, query, body)
        except ArmError as exc:
            status, doc, headers = exc.status, exc.body, exc.headers
        # Logged before the answer leaves: a client that reads the log right after a response sees it.
        with self.state.lock:
            self.state.requests.append(Logged(method, path, query.get("api-version"), status, self.client_id))
        self._send(status, doc, headers)

    def _answer(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, JSON | None, dict[str, str]]:
        fault = self._fault(method, path)
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return fault.status, fault.body(), headers
        if path.startswith("/_double/"):
            status, admin_doc = self._admin(method, path, body)
            return status, admin_doc, {}
        if self._is_token_path(path):
            status, token_doc = self._entra(method, path, body)
            return status, token_doc, {"Cache-Control": "no-store"}
        self.client_id = self._authenticate()
        return self._arm(method, path, query, body)

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.state.lock:
            for fault in self.state.config.faults:
                if fault.match in f"{method} {path}" and (fault.times == 0 or fault.used < fault.times):
                    fault.used += 1
                    break
            else:
                return None
        if fault.delay:
            time.sleep(fault.delay)
        return fault if fault.status else None

    # -- Entra ID ------------------------------------------------------------------------------------------
    @staticmethod
    def _is_token_path(path: str) -> bool:
        return path.endswith("/v2.0/.well-known/openid-configuration") or path.endswith("/oauth2/v2.0/token")

    def _entra(self, method: str, path: str, body: bytes) -> tuple[int, JSON]:
        config = self.state.config
        tenant = path.strip("/").split("/", 1)[0]
        base = f"{self.state.base_url}/{tenant}"
        if tenant != config.tenant:
            return 400, _aad_error(
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the "
                "correct tenant ID and are signing into the correct cloud.",
            )
        if path.endswith("openid-configuration"):
            if method != "GET":
                raise ArmError(405, "MethodNotAllowed", "GET only")
            return 200, {
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "EU",
            }
        if method != "POST":
            raise ArmError(405, "MethodNotAllowed", "POST only")
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") != "client_credentials":
            return 400, _aad_error(
                "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        client = form.get("client_id", "")
        expected = config.principals.get(client)
        if expected is None:
            return 400, _aad_error(
                "unauthorized_client",
                700016,
                f"Application with identifier '{client}' was not found in the directory '{tenant}'.",
            )
        if expected.startswith("-----BEGIN"):
            problem = _check_assertion(form, expected, client, f"{base}/oauth2/v2.0/token")
            if problem:
                return 401, _aad_error("invalid_client", 700027, f"Client assertion failed: {problem}.")
        elif not secrets.compare_digest(form.get("client_secret", ""), expected):
            return 401, _aad_error(
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in "
                "the request is the client secret value, not the client secret ID, for a secret added "
                f"to app '{client}'.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default") or " " in scope.strip():
            return 400, _aad_error(
                "invalid_scope", 70011, f"The provided value for scope {scope} is not valid."
            )
        token = secrets.token_urlsafe(32)
        with self.state.lock:
            self.state.tokens[token] = (client, scope.removesuffix("/.default"), time.time() + TOKEN_LIFETIME)
        return 200, {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": token,
        }

    def _authenticate(self) -> str:
        header = self.headers.get("Authorization") or ""
        challenge = {
            "WWW-Authenticate": "Bearer "
            f'authorization_uri="{self.state.base_url}/{self.state.config.tenant}", '
            'error="invalid_token", error_description="The authentication failed because of missing '
            "'Authorization' header.\""
        }
        if not header.startswith("Bearer "):
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                challenge,
            )
        with self.state.lock:
            issued = self.state.tokens.get(header.removeprefix("Bearer ").strip())
        if issued is None or issued[2] < time.time() or issued[1].rstrip("/") != ARM_AUDIENCE:
            raise ArmError(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid, expired or for another audience.",
                challenge,
            )
        return issued[0]

    # -- ARM -----------------------------------------------------------------------------------------------
    def _arm(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, JSON | None, dict[str, str]]:
        op_match = OPERATION_RE.match(path)
        if op_match:
            return self._operation(op_match["op"], bool(op_match["location"]))
        cluster = CLUSTER_RE.match(path)
        child = CHILD_RE.match(path)
        match = cluster or child
        if match is None:
            raise ArmError(404, "InvalidResourceType", f"The resource type could not be found for '{path}'.")
        kind = (child["kind"] if child else "connectedClusters").lower()
        version = query.get("api-version")
        if not version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version not in API_VERSIONS[kind]:
            raise ArmError(
                400,
                "NoRegisteredProviderFound",
                f"No registered resource provider found for location '{self.state.config.location}' and API "
                f"version '{version}' for type '{TYPE_NAMES[kind].split('/', 1)[1]}'. The supported "
                f"api-versions are '{', '.join(sorted(API_VERSIONS[kind]))}'.",
            )
        self._scope(match["sub"], match["rg"])
        with self.state.lock:
            self.state.settle()
            if child and child["op"]:
                return self._operation(child["op"], False)
            if child:
                parent = path.split("/providers/Microsoft.KubernetesConfiguration/", 1)[0]
                if parent.lower() not in self.state.resources:
                    raise ArmError(
                        404,
                        "ParentResourceNotFound",
                        f"Failed to perform '{'read' if method == 'GET' else 'write'}' on resource(s) of "
                        f"type 'connectedClusters/{child['kind']}', because the parent resource "
                        f"'{parent}' could not be found.",
                    )
                name = child["name"]
            else:
                name = match["cluster"]
            if name is None:
                if method != "GET":
                    raise ArmError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
                return self._list(path, kind, query)
            if method == "GET":
                return 200, self._get(path, kind, name), {}
            if method == "PUT":
                return self._put(path, kind, name, body, version)
            if method == "DELETE":
                return self._delete(path, kind, version)
        raise ArmError(405, "MethodNotAllowed", f"{method} is not supported by the double on {kind}")

    def _scope(self, sub: str, rg: str) -> None:
        config = self.state.config
        if config.subscriptions and sub not in config.subscriptions:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        if config.resource_groups and rg.lower() not in {g.lower() for g in config.resource_groups}:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")

    def _get(self, path: str, kind: str, name: str) -> JSON:
        doc = self.state.resources.get(path.lower())
        if doc is None:
            rg = path.split("/")[4]
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{TYPE_NAMES[kind]}/{name}' under resource group '{rg}' was not found. "
                "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return self._view(doc)

    def _view(self, doc: JSON) -> JSON:
        """The document as served now (a Flux configuration's compliance follows its schedule)."""
        out: JSON = json.loads(json.dumps(doc))
        if doc["type"] == TYPE_NAMES["fluxconfigurations"]:
            props = out["properties"]
            rule = self.state.compliance(doc["name"], doc["id"])
            if props["provisioningState"] != "Succeeded" or rule is None:
                props["complianceState"] = "Pending"
            else:
                props["complianceState"] = rule.state
                condition = {
                    "lastTransitionTime": _now_iso(),
                    "message": rule.message or "Applied revision: main/0ba6f0d3",
                    "reason": "ReconciliationSucceeded"
                    if rule.state == "Compliant"
                    else "ReconciliationFailed",
                    "status": "True" if rule.state == "Compliant" else "False",
                    "type": "Ready",
                }
                props["statuses"] = [
                    {
                        "name": f"{doc['name']}-{k}",
                        "kind": "Kustomization",
                        "namespace": props.get("namespace"),
                        "complianceState": rule.state,
                        "statusConditions": [condition],
                    }
                    for k in props.get("kustomizations") or {}
                ]
                props["errorMessage"] = "" if rule.state == "Compliant" else rule.message
        return out

    def _list(self, path: str, kind: str, query: dict[str, str]) -> tuple[int, JSON, dict[str, str]]:
        prefix = path.lower() + "/"
        items = [
            self._view(doc)
            for key, doc in sorted(self.state.resources.items())
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]
        start = int(query.get("$skipToken") or 0)
        page = items[start : start + PAGE_SIZE]
        out: JSON = {"value": page}
        if start + PAGE_SIZE < len(items):
            params = urllib.parse.urlencode(
                {"api-version": query["api-version"], "$skipToken": start + PAGE_SIZE}
            )
            out["nextLink"] = f"{self.state.base_url}{urllib.parse.quote(path)}?{params}"
        return 200, out, {}

    def _conflict(self, path: str) -> None:
        running = self.state.running(path)
        if running is not None:
            raise ArmError(
                409,
                "Conflict",
                f"Operation '{running.method}' is in progress on '{path}' "
                "(AnotherOperationInProgress): retry once it has completed.",
            )

    def _async_headers(self, op: Operation, version: str, location: bool) -> dict[str, str]:
        params = urllib.parse.urlencode({"api-version": version})
        headers = {"Azure-AsyncOperation": f"{self.state.base_url}/_operations/{op.op_id}?{params}"}
        if location:
            headers["Location"] = f"{self.state.base_url}/_operations/{op.op_id}/location?{params}"
        if self.state.config.retry_after is not None:
            headers["Retry-After"] = str(self.state.config.retry_after)
        return headers

    def _put(
        self, path: str, kind: str, name: str, body: bytes, version: str
    ) -> tuple[int, JSON, dict[str, str]]:
        self._conflict(path)
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise ArmError(400, "InvalidRequestContent", "The request content was invalid JSON.") from None
        if not isinstance(request, dict) or not isinstance(request.get("properties", {}), dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        problem = _validate(kind, request)
        if problem:
            raise ArmError(400, "BadRequest", problem)
        key = path.lower()
        existed = key in self.state.resources
        props = dict(request.get("properties") or {})
        props["provisioningState"] = "Creating" if not existed else "Updating"
        doc: JSON = {
            "id": path,
            "name": name,
            "type": TYPE_NAMES[kind],
            "properties": props,
            "systemData": {"createdAt": _now_iso(), "createdByType": "Application"},
        }
        if kind == "connectedclusters":
            doc["location"] = request.get("location") or self.state.config.location
            doc["identity"] = request.get("identity") or {"type": "SystemAssigned"}
            doc["tags"] = request.get("tags") or {}
            props.setdefault("connectivityStatus", "Connecting")
        if kind == "fluxconfigurations":
            for kname, kust in (props.get("kustomizations") or {}).items():
                kust["name"] = kname
            props["complianceState"] = "Pending"
            props["statuses"] = []
        self.state.resources[key] = doc
        op = self.state.start(path, kind, "PUT")
        self.state.settle()
        return (200 if existed else 201), self._view(doc), self._async_headers(op, version, False)

    def _delete(self, path: str, kind: str, version: str) -> tuple[int, JSON | None, dict[str, str]]:
        self._conflict(path)
        key = path.lower()
        doc = self.state.resources.get(key)
        if doc is None:
            return 204, None, {}
        doc["properties"]["provisioningState"] = "Deleting"
        self.state.settled_at.pop(key, None)
        # Children go with their cluster (as ARM deletes the extension resources of a deleted cluster).
        for child in [k for k in self.state.resources if k.startswith(key + "/providers/")]:
            self.state.resources.pop(child)
        op = self.state.start(path, kind, "DELETE")
        self.state.settle()
        return 202, None, self._async_headers(op, version, True)

    def _operation(self, op_id: str, location: bool) -> tuple[int, JSON | None, dict[str, str]]:
        with self.state.lock:
            self.state.settle()
            op = self.state.operations.get(op_id)
            if op is None:
                raise ArmError(404, "OperationNotFound", f"The operation '{op_id}' was not found.")
            retry = self.state.config.retry_after
            headers = {"Retry-After": str(retry)} if retry is not None else {}
            if location:
                # Location polling: 202 while running, then 204 for a delete (200 + resource otherwise).
                if not op.applied:
                    return 202, None, headers
                doc = self.state.resources.get(op.resource_id.lower())
                return (200, self._view(doc), {}) if doc and op.method != "DELETE" else (204, None, {})
            status = "InProgress" if not op.applied else op.result
            out: JSON = {"id": f"{op.resource_id}/operations/{op_id}", "name": op_id, "status": status}
            if status == "Failed":
                out["error"] = {
                    "code": "OperationFailed",
                    "message": f"The {op.method} of {op.resource_id} failed.",
                }
            return 200, out, headers if status == "InProgress" else {}

    # -- admin ---------------------------------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, JSON]:
        state = self.state
        with state.lock:
            if path == "/_double/requests" and method == "GET":
                return 200, {"requests": [r.__dict__ for r in state.requests]}
            if path == "/_double/resources" and method == "GET":
                state.settle()
                return 200, {"resources": [self._view(d) for d in state.resources.values()]}
            if path == "/_double/resources" and method == "POST":
                doc = json.loads(body or b"{}")
                state.put_resource(
                    doc["id"], doc.get("properties") or {}, doc.get("location"), doc.get("tags")
                )
                return 200, {"ok": True}
            if path == "/_double/faults" and method == "POST":
                doc = json.loads(body or b"{}")
                state.config.faults.extend(Fault(**f) for f in doc.get("faults") or ())
                return 200, {"ok": True}
        raise ArmError(404, "NotFound", f"no admin endpoint {method} {path}")


def _aad_error(error: str, code: int, text: str) -> JSON:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {text} Trace ID: {uuid.uuid4()} Timestamp: {_now_iso()}",
        "error_codes": [code],
        "timestamp": _now_iso(),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
    }


def _check_assertion(form: dict[str, str], cert_pem: str, client: str, audience: str) -> str:
    """Why a client assertion is refused ('' when it is good): type, signature, thumbprint, claims."""
    if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
        return "client_assertion_type is not jwt-bearer"
    parts = form.get("client_assertion", "").split(".")
    if len(parts) != 3:
        return "client_assertion is not a JWT"
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except ValueError:
        return "client_assertion is not a JWT"
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return "the registered certificate is not RSA"
    signed = f"{parts[0]}.{parts[1]}".encode()
    alg = header.get("alg")
    if alg == "PS256":
        thumb_ok = str(header.get("x5t#S256")).rstrip("=") == _thumbprint(cert_pem, "sha256")
        pad: padding.AsymmetricPadding = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    elif alg == "RS256":
        thumb_ok = str(header.get("x5t")).rstrip("=") == _thumbprint(cert_pem, "sha1")
        pad = padding.PKCS1v15()
    else:
        return f"unsupported alg {alg}"
    if not thumb_ok:
        return "the key was not found (thumbprint of an unregistered certificate)"
    try:
        key.verify(signature, signed, pad, hashes.SHA256())
    except InvalidSignature:
        return "the signature is invalid"
    if claims.get("iss") != client or claims.get("sub") != client:
        return "iss/sub are not the client id"
    if claims.get("aud") != audience:
        return f"aud {claims.get('aud')!r} is not the token endpoint"
    if float(claims.get("exp", 0)) < time.time():
        return "the assertion has expired"
    return ""


def _validate(kind: str, request: JSON) -> str:
    """The RP's required fields ('' when valid), from the specs' `required` lists."""
    props = request.get("properties") or {}
    if kind == "connectedclusters":
        missing = [k for k in ("agentPublicKeyCertificate",) if k not in props]
        if "identity" not in request:
            missing.append("identity")
        return f"connectedClusters PUT misses {', '.join(missing)}" if missing else ""
    if kind == "extensions":
        return "" if props.get("extensionType") else "extensions PUT misses properties.extensionType"
    source = props.get("sourceKind", "GitRepository")
    if source == "GitRepository" and not (props.get("gitRepository") or {}).get("url"):
        return "fluxConfigurations PUT misses properties.gitRepository.url"
    for kname, kust in (props.get("kustomizations") or {}).items():
        for dep in kust.get("dependsOn") or []:
            if dep not in props["kustomizations"]:
                return f"kustomization {kname} depends on unknown kustomization {dep}"
    return ""


class ArmServer(ThreadingHTTPServer):
    """The TLS server; `state` is shared by every handler thread."""

    daemon_threads = True

    def __init__(
        self, state: ArmState, certfile: Path, keyfile: Path, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__((host, port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.state = state
        self.state.base_url = f"https://{host}:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-handshake is not an error worth a traceback."""


class ArmDouble:
    """The double on a daemon thread: `url`, `authority`, `state`, `requests()`, `close()`.

    arm = ArmDouble(leaf.cert, leaf.key, ArmConfig(principals={CLIENT: SECRET}))
    cred = ClientSecretCredential(arm.config.tenant, CLIENT, SECRET, authority=arm.url,
                                  disable_instance_discovery=True, connection_verify=CA)
    """

    def __init__(self, certfile: Path, keyfile: Path, config: ArmConfig | None = None, port: int = 0) -> None:
        self.config = config or ArmConfig()
        self.state = ArmState(self.config)
        self.server = ArmServer(self.state, certfile, keyfile, port=port)
        self.url = self.state.base_url
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()
        self._stopping = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        # Operations complete on their own schedule, whether or not anyone polls (hooks fire on time, within
        # SETTLE_TICK: a coarser tick showed up as up to 50 ms of firstboot "overhead" per operation).
        while not self._stopping.wait(SETTLE_TICK):
            with self.state.lock:
                self.state.settle()

    def requests(self, *, arm_only: bool = False) -> list[Logged]:
        """The request log (ARM only: without token and admin requests)."""
        with self.state.lock:
            logged = list(self.state.requests)
        if arm_only:
            return [
                r
                for r in logged
                if r.path.startswith("/subscriptions/") or r.path.startswith("/_operations/")
            ]
        return logged

    def resource(self, resource_id: str) -> JSON | None:
        """A resource as ARM would serve it now (None when absent)."""
        with self.state.lock:
            self.state.settle()
            doc = self.state.resources.get(resource_id.lower())
            return None if doc is None else json.loads(json.dumps(doc))

    def put_resource(self, resource_id: str, properties: JSON | None = None, **extra: Any) -> None:
        """Place a Succeeded resource (a connected cluster left by `az connectedk8s connect`)."""
        with self.state.lock:
            self.state.put_resource(resource_id, properties or {}, extra.get("location"), extra.get("tags"))

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        self._ticker.join(timeout=5)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ArmDouble:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cluster_id(subscription: str, resource_group: str, cluster: str) -> str:
    """The ARM id of a connected cluster."""
    return (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Kubernetes/"
        f"connectedClusters/{cluster}"
    )


def main(argv: list[str] | None = None) -> int:
    """Standalone: serve until SIGTERM/SIGINT; prints (or writes to --url-file) the base URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="JSON: tenant, principals, subscriptions, faults, ...")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url-file", type=Path)
    args = parser.parse_args(argv)
    config = ArmConfig.from_mapping(json.loads(args.config.read_text())) if args.config else ArmConfig()
    double = ArmDouble(args.cert, args.key, config, port=args.port)
    if args.url_file:
        args.url_file.write_text(double.url + "\n")
    print(double.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    double.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
