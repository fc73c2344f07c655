"""An `az` (Azure CLI) double: the commands arcbake's arc and flux steps run, with the documented JSON output
and exit codes, an argv log and fault injection. Stdlib + PyYAML only; `tests/doubles/az` is its executable.

Commands: `version`, `login --service-principal -u ID (-p SECRET|-p @FILE | --certificate FILE) --tenant T`,
`logout [--username ID]`, `account set|show`, `connectedk8s show|connect`, `k8s-extension show|create`,
`k8s-configuration flux show|create`. Exit codes as the real CLI: 0 ok, 1 error, 2 usage, 3 ResourceNotFound
on `show`. Errors go to stderr as `ERROR: (Code) message`.

Environment:
    AZ_DOUBLE_STATE   JSON file with the simulated Azure state (login, clusters, extensions, configurations)
    AZ_DOUBLE_LOG     every invocation's argv appended as one JSON line, before anything else happens
    AZ_DOUBLE_TIMES   one JSON line per invocation as it exits: `started` (its exec, proc_clock), `ended`
                      (time.monotonic()) and `slept` (its simulated latency): what the double itself cost
                      is ended - started - slept, which the overhead bench does not charge to firstboot
    AZ_DOUBLE_CONFIG  YAML/JSON: expected credentials, known resource groups, latencies, faults, pods:

        client_id: 00000000-...          # optional: the only service principal that may sign in
        secret: "..."                    # optional: its secret (a wrong one fails with AADSTS7000215)
        tenant: ...                      # optional
        subscriptions: [sub-guid]        # optional: without it, `account set` accepts any subscription
        resource_groups: [rg1]           # optional: others fail with ResourceGroupNotFound
        latency: {"connectedk8s connect": 4, "k8s-extension create": 1, "k8s-configuration flux create": 0.5}
        faults:
          - {command: "connectedk8s connect", mode: transient, times: 2}    # fail twice, then work
          - {command: "login", mode: permanent, code: AADSTS7000215}
          - {command: "k8s-extension create", mode: hang}
        arc_pods:  [{name: config-agent-1, ready_after: 1}]   # created in azure-arc on connect
        flux_pods: [{name: source-controller-1, ready_after: 1}]
        compliance: {cluster-config: {state: Non-Compliant, after: 0.5, message: "..."}}  # after create

Credentials on disk, as the real az keeps them in `AZURE_CONFIG_DIR` (Azure/azure-cli
src/azure-cli-core/azure/cli/core/auth/identity.py at 0235335b3050513da1b180898aaa6b4520317f65,
`Identity.__init__`: `service_principal_entries` and `msal_token_cache` in the config dir; persistence.py at
011b9d53dba5fa85fe60eb087ed2182ccc6055a2: plaintext `FilePersistence` with the `.json` extension where
encryption is off or unavailable, Linux's default): a successful service principal `login` saves the entry
`{client_id, tenant, client_secret | certificate}` (`login_with_service_principal`, "Only persist the service
principal after a successful login"; `ServicePrincipalAuth.get_entry_to_persist`) and its access token in the
MSAL token cache; later calls load that entry (a certificate entry holds the PEM's path, read again on every
call). `logout` (`logout_service_principal`) removes that client's tokens and its entry, but the
files stay (the store is rewritten with the remaining entries: `ServicePrincipalStore.remove_entry`).

On connect, the double creates the `azure-arc` pods in the Kubernetes API double named by `--kube-config`
(through its `POST /_double/objects`), so the arc step's pod wait is real; extension create does the same
for `flux-system`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from doubles.proc_clock import process_started

JSON = dict[str, Any]
CLI_VERSION = "2.67.0"
EXTENSIONS = {"connectedk8s": "1.10.5", "k8s-extension": "1.6.3", "k8s-configuration": "2.2.0"}
DEFAULT_ARC_PODS = [
    {"name": n, "ready_after": 0.3}
    for n in (
        "cluster-metadata-operator-7d9f",
        "clusterconnect-agent-6c8b",
        "clusteridentityoperator-5f7d",
        "config-agent-7b5c",
        "controller-manager-6d4b",
        "extension-manager-8c7f",
        "kube-aad-proxy-5b9d",
        "metrics-agent-7c6d",
        "resource-sync-agent-6f8b",
    )
]
DEFAULT_FLUX_PODS = [
    {"name": n, "ready_after": 0.3}
    for n in (
        "fluxconfig-agent-5f6c",
        "fluxconfig-controller-7b8d",
        "helm-controller-6c9f",
        "kustomize-controller-8d7b",
        "notification-controller-5c6d",
        "source-controller-7f8c",
    )
]
# Short options per command group (the real CLI's aliases).
ALIASES: dict[str, dict[str, str]] = {
    "login": {"-u": "--username", "-p": "--password", "-t": "--tenant"},
    "account": {"-s": "--subscription", "-n": "--name"},
    "connectedk8s": {"-n": "--name", "-g": "--resource-group", "-l": "--location"},
    "k8s-extension": {
        "-n": "--name",
        "-g": "--resource-group",
        "-c": "--cluster-name",
        "-t": "--cluster-type",
    },
    "k8s-configuration": {
        "-n": "--name",
        "-g": "--resource-group",
        "-c": "--cluster-name",
        "-t": "--cluster-type",
        "-u": "--url",
        "-k": "--kustomization",
        "--ns": "--namespace",
        "--local-ref": "--local-auth-ref",
    },
}
# Environment variables recorded with each argv (never credentials: az takes none from the environment here).
LOGGED_ENV = (
    "AZURE_CONFIG_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTPS_PROXY",
    "NO_PROXY",
    "HELM_CLIENT_PATH",
    "KUBECTL_CLIENT_PATH",
)
# What connectedk8s fetches when HELM_CLIENT_PATH / KUBECTL_CLIENT_PATH do not name a binary
# (Azure/azure-cli-extensions src/connectedk8s/azext_connectedk8s/_utils.py: install_helm_client() pulls
# helm from MCR with oras; install_kubectl_client() runs `az aks install-cli`, which fetches kubectl from
# dl.k8s.io and kubelogin from GitHub).
CLIENT_DOWNLOADS = {
    "HELM_CLIENT_PATH": ("helm", ["mcr.microsoft.com:443"]),
    "KUBECTL_CLIENT_PATH": ("kubectl", ["dl.k8s.io:443", "github.com:443"]),
}
PARAMS = Path(__file__).resolve().parent / "data" / "az_connectedk8s_params.json"
GLOBAL_FLAGS = {"--only-show-errors", "--debug", "--verbose", "--yes", "-y", "--no-wait"}


class AzError(Exception):
    """An az failure: exit code and the stderr text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def arm_error(code: str, message: str, exit_code: int = 1) -> AzError:
    """The shape az prints for an ARM error."""
    return AzError(exit_code, f"({code}) {message}\nCode: {code}\nMessage: {message}")


def not_found(rtype: str, name: str, rg: str) -> AzError:
    """ResourceNotFound, exit 3 (what `az ... show` returns for a missing resource)."""
    msg = (
        f"The Resource '{rtype}/{name}' under resource group '{rg}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix"
    )
    return arm_error("ResourceNotFound", msg, exit_code=3)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- argv --------------------------------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split argv into command words and options (each option: the list of values that follow it)."""
    words: list[str] = []
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv) and not argv[i].startswith("-"):
        words.append(argv[i])
        i += 1
    aliases = ALIASES.get(words[0] if words else "", {})
    current: str | None = None
    while i < len(argv):
        token = argv[i]
        if token.startswith("-") and not _is_negative_number(token):
            name, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
            name = aliases.get(name, name)
            current = name
            opts.setdefault(name, [])
            if inline:
                opts[name].append(inline)
        elif current is None:
            raise AzError(2, f"unrecognized arguments: {token}")
        else:
            opts[current].append(token)
        i += 1
    return words, opts


def _known_options(words: list[str], given: list[str]) -> None:
    """Refuse, as az's argparse does (exit 2), an option the pinned extension does not define for the
    command (tables and sources: data/az_connectedk8s_params.json)."""
    table = json.loads(PARAMS.read_text())["commands"].get(" ".join(words[:2]))
    if table is None:
        return
    unknown = [g.partition("=")[0] for g in given if g.partition("=")[0] not in table]
    if unknown:
        raise AzError(2, f"unrecognized arguments: {' '.join(unknown)}")


def _is_negative_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def one(opts: dict[str, list[str]], name: str, required: bool = True) -> str | None:
    """The single value of an option; a missing required one is a usage error (exit 2)."""
    values = opts.get(name)
    if not values:
        if required:
            raise AzError(2, f"the following arguments are required: {name}")
        return None
    value = " ".join(values)
    if value.startswith("@"):
        # az loads any `@FILE` argument from the file (how secrets stay off the command line).
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise AzError(1, f"[Errno {exc.errno}] {exc.strerror}: '{path}'") from exc
    return value


def _load_mapping(path: Path) -> JSON:
    # JSON first: importing yaml costs more than the rest of an invocation (the double runs a lot).
    text = path.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        doc = yaml.safe_load(text)
    return doc if isinstance(doc, dict) else {}


# -- persistence -------------------------------------------------------------------------------------------
class Double:
    """One invocation: config, state and log."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        config_dir = Path(env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
        self.state_path = Path(env.get("AZ_DOUBLE_STATE") or config_dir / "az-double-state.json")
        self.log_path = Path(env["AZ_DOUBLE_LOG"]) if env.get("AZ_DOUBLE_LOG") else None
        config_path = env.get("AZ_DOUBLE_CONFIG")
        self.config: JSON = _load_mapping(Path(config_path)) if config_path else {}

    def log(self, argv: list[str]) -> None:
        if self.log_path is None:
            return
        env = {k: self.env[k] for k in LOGGED_ENV if k in self.env}
        line = json.dumps({"argv": argv, "env": env, "time": time.time(), "pid": os.getpid()})
        with self.log_path.open("a") as fh:
            fh.write(line + "\n")

    @contextlib.contextmanager
    def state(self) -> Iterator[JSON]:
        """Read-modify-write of the state file under an exclusive lock."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_name(self.state_path.name + ".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc: JSON = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
            except json.JSONDecodeError:
                doc = {}
            yield doc
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
            tmp.replace(self.state_path)

    def peek(self) -> JSON:
        """The state, read without writing it back."""
        try:
            doc: JSON = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return doc

    # -- faults ----------------------------------------------------------------------------------------
    def inject(self, command: str, context: JSON) -> None:
        """Apply the first configured fault for `command` (prefix match on the command words)."""
        for index, fault in enumerate(self.config.get("faults") or []):
            if not command.startswith(str(fault.get("command", ""))):
                continue
            mode = fault.get("mode", "transient")
            if mode == "hang":
                while True:
                    time.sleep(3600)
            if mode == "transient":
                with self.state() as doc:
                    counts = doc.setdefault("fault_counts", {})
                    used = int(counts.get(str(index), 0))
                    if used >= int(fault.get("times", 1)):
                        continue
                    counts[str(index)] = used + 1
                message = fault.get("message") or (
                    "The server is currently unable to handle the request due to a temporary overloading "
                    "or maintenance of the server. Please retry the request later."
                )
                raise arm_error(fault.get("code", "ServiceUnavailable"), message)
            raise self.permanent(fault, context)

    def permanent(self, fault: JSON, context: JSON) -> AzError:
        code = fault.get("code", "AuthorizationFailed")
        if fault.get("message"):
            return arm_error(code, fault["message"])
        if code.startswith("AADSTS"):
            return AzError(1, self.aadsts(code, context.get("client_id", "")))
        if code == "ResourceGroupNotFound":
            return arm_error(code, f"Resource group '{context.get('rg', '')}' could not be found.")
        if code == "AuthorizationFailed":
            return arm_error(
                code,
                f"The client '{context.get('client_id', '')}' with object id '{uuid.uuid4()}' does not have "
                "authorization to perform action 'Microsoft.Kubernetes/connectedClusters/write' over scope "
                f"'/subscriptions/{context.get('sub', '')}/resourceGroups/{context.get('rg', '')}' or the "
                "scope is invalid. If access was recently granted, please refresh your credentials.",
            )
        return arm_error(code, f"injected permanent failure {code}")

    @staticmethod
    def aadsts(code: str, client_id: str) -> str:
        texts = {
            "AADSTS7000215": "Invalid client secret provided. Ensure the secret being sent in the request is "
            f"the client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            "AADSTS700016": f"Application with identifier '{client_id}' was not found in the directory.",
            "AADSTS700027": "Client assertion failed signature validation.",
            "AADSTS90002": "Tenant not found.",
        }
        return f"{code}: {texts.get(code, 'Authentication failed.')}"

    def sleep(self, command: str) -> None:
        latency = float((self.config.get("latency") or {}).get(command, 0))
        if latency > 0:
            SLEPT.append(latency)
            time.sleep(latency)


# -- commands ----------------------------------------------------------------------------------------------
def cmd_version(d: Double, opts: dict[str, list[str]]) -> JSON:
    return {
        "azure-cli": CLI_VERSION,
        "azure-cli-core": CLI_VERSION,
        "azure-cli-telemetry": "1.1.0",
        "extensions": EXTENSIONS,
    }


def cmd_login(d: Double, opts: dict[str, list[str]]) -> list[JSON]:
    if "--service-principal" not in opts:
        raise AzError(1, "the double only signs in service principals (--service-principal)")
    client_id = one(opts, "--username") or ""
    tenant = one(opts, "--tenant") or ""
    cert_path = one(opts, "--certificate", required=False)
    password = one(opts, "--password", required=False) if cert_path is None else None
    context = {"client_id": client_id}
    d.inject("login", context)
    cfg = d.config
    if cfg.get("tenant") and tenant != cfg["tenant"]:
        raise AzError(1, f"AADSTS90002: Tenant '{tenant}' not found.")
    if cfg.get("client_id") and client_id != cfg["client_id"]:
        raise AzError(1, d.aadsts("AADSTS700016", client_id))
    if cert_path is not None:
        try:
            pem = Path(cert_path).read_text()
        except OSError as exc:
            raise AzError(1, f"[Errno {exc.errno}] {exc.strerror}: '{cert_path}'") from exc
        if "PRIVATE KEY" not in pem or "CERTIFICATE" not in pem:
            raise AzError(1, "Could not deserialize key data. The certificate must hold a private key.")
        if cfg.get("certificate") and cfg["certificate"].strip() != pem.strip():
            raise AzError(1, d.aadsts("AADSTS700027", client_id))
    else:
        if not password:
            raise AzError(
                2, "usage error: --password/-p or --certificate is required for a service principal"
            )
        if cfg.get("secret") and password != cfg["secret"]:
            raise AzError(1, d.aadsts("AADSTS7000215", client_id))
    d.sleep("login")
    subs = cfg.get("subscriptions") or ["00000000-0000-0000-0000-000000000001"]
    accounts = [
        {
            "cloudName": "AzureCloud",
            "homeTenantId": tenant,
            "id": sub,
            "isDefault": i == 0,
            "managedByTenants": [],
            "name": f"subscription-{i}",
            "state": "Enabled",
            "tenantId": tenant,
            "user": {"name": client_id, "type": "servicePrincipal"},
        }
        for i, sub in enumerate(subs)
    ]
    credential = {"certificate": cert_path} if cert_path is not None else {"client_secret": password}
    _persist_login(d, {"client_id": client_id, "tenant": tenant, **credential})
    with d.state() as doc:
        doc["login"] = {"client_id": client_id, "tenant": tenant, "subscriptions": subs, "current": subs[0]}
    return accounts


SP_STORE = "service_principal_entries.json"
TOKEN_CACHE = "msal_token_cache.json"


def _config_dir(d: Double) -> Path:
    return Path(d.env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")


def _read_json(path: Path, empty: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return empty


def _write_private(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, indent=4))


def _persist_login(d: Double, entry: JSON) -> None:
    """What az leaves in its config dir after a service principal signs in (see the module docstring)."""
    store = _config_dir(d) / SP_STORE
    entries = [
        e
        for e in _read_json(store, [])
        if not (e.get("client_id") == entry["client_id"] and e.get("tenant") == entry["tenant"])
    ]
    _write_private(store, [*entries, entry])
    cache_path = _config_dir(d) / TOKEN_CACHE
    cache = _read_json(cache_path, {})
    tokens = cache.setdefault("AccessToken", {})
    tokens[f"{entry['client_id']}-{entry['tenant']}-accesstoken"] = {
        "client_id": entry["client_id"],
        "credential_type": "AccessToken",
        "secret": f"eyJ.double-token.{uuid.uuid4().hex}",
        "realm": entry["tenant"],
        "target": "https://management.core.windows.net//.default",
    }
    _write_private(cache_path, cache)


def cmd_logout(d: Double, opts: dict[str, list[str]]) -> None:
    """`az logout`: the client's tokens and store entry removed; the two files remain (rewritten)."""
    login = d.peek().get("login")
    username = one(opts, "--username", required=False) or (login or {}).get("client_id")
    if not username:
        raise AzError(1, "There are no active accounts.")
    store = _config_dir(d) / SP_STORE
    if store.exists():
        _write_private(store, [e for e in _read_json(store, []) if e.get("client_id") != username])
    cache_path = _config_dir(d) / TOKEN_CACHE
    if cache_path.exists():
        cache = _read_json(cache_path, {})
        for kind, items in cache.items():
            if isinstance(items, dict):
                cache[kind] = {k: v for k, v in items.items() if v.get("client_id") != username}
        _write_private(cache_path, cache)
    with d.state() as doc:
        if (doc.get("login") or {}).get("client_id") == username:
            doc.pop("login", None)


def require_login(d: Double) -> JSON:
    """The signed-in account, whose credential az loads from its store for every call (identity.py,
    `get_service_principal_credential` -> `ServicePrincipalStore.load_entry`, then `ServicePrincipalAuth`
    opens a certificate entry's file): a missing entry or certificate file fails the call."""
    login = d.peek().get("login")
    if not login:
        raise AzError(1, "Please run 'az login' to setup account.")
    client_id = login["client_id"]
    entries = [e for e in _read_json(_config_dir(d) / SP_STORE, []) if e.get("client_id") == client_id]
    if not entries:
        raise AzError(
            1,
            f"Could not retrieve credential from local cache for service principal {client_id}. "
            "Run `az login` for this service principal.",
        )
    cert = entries[0].get("certificate")
    if cert is not None and not Path(cert).is_file():
        raise AzError(1, f"[Errno 2] No such file or directory: '{cert}'")
    return dict(login)


def cmd_account(d: Double, words: list[str], opts: dict[str, list[str]]) -> JSON | None:
    login = require_login(d)
    if words[1:2] == ["set"]:
        sub = one(opts, "--subscription") or ""
        # Without configured subscriptions, the service principal sees whichever it is asked for.
        if d.config.get("subscriptions") is None and sub not in login["subscriptions"]:
            login["subscriptions"].append(sub)
            with d.state() as doc:
                doc["login"]["subscriptions"] = login["subscriptions"]
        if sub not in login["subscriptions"]:
            raise AzError(1, f"The subscription of '{sub}' doesn't exist in cloud 'AzureCloud'.")
        with d.state() as doc:
            doc["login"]["current"] = sub
        return None
    if words[1:2] == ["show"]:
        return {"id": login["current"], "tenantId": login["tenant"], "user": {"name": login["client_id"]}}
    raise AzError(2, f"'{' '.join(words)}' is not in the 'az account' command group.")


def _scope(d: Double, opts: dict[str, list[str]], context_cmd: str) -> tuple[JSON, str, str]:
    login = require_login(d)
    rg = one(opts, "--resource-group") or ""
    known = d.config.get("resource_groups")
    sub = one(opts, "--subscription", required=False) or login["current"]
    subs = d.config.get("subscriptions")
    if subs is not None and sub not in subs:
        raise arm_error("SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    context = {"client_id": login["client_id"], "rg": rg, "sub": sub}
    d.inject(context_cmd, context)
    if known is not None and rg not in known:
        raise arm_error("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
    return login, rg, sub


def _cluster_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}"


def _kube_server(kubeconfig: str) -> str:
    doc = _load_mapping(Path(kubeconfig))
    current = doc.get("current-context")
    cluster_name = next(
        (c["context"]["cluster"] for c in doc.get("contexts") or [] if c.get("name") == current), None
    )
    for cluster in doc.get("clusters") or []:
        if cluster.get("name") == cluster_name or cluster_name is None:
            return str(cluster["cluster"]["server"]).rstrip("/")
    raise AzError(1, f"Problem loading the kubeconfig file: no cluster in {kubeconfig}")


def _kube_request(server: str, path: str, body: JSON | None = None) -> JSON | None:
    """A request to the Kubernetes API double (POST when `body`); None for a 404."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - loopback URL from the kubeconfig
        server + path,
        data=data,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        # The double API is on loopback: never through the proxy a test configures.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=5) as resp:
            doc: JSON = json.loads(resp.read() or b"{}")
            return doc
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise AzError(1, f"Failed to connect to the Kubernetes cluster: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise AzError(
            1,
            "Failed to connect to the Kubernetes cluster: Error while connecting to the cluster "
            f"({exc}). Please check your kubeconfig.",
        ) from exc


def _post_objects(
    server: str, namespace: str, pods: list[JSON], configmaps: list[JSON] | None = None
) -> None:
    objects = {"pods": [{"namespace": namespace, **p} for p in pods], "configmaps": configmaps or []}
    _kube_request(server, "/_double/objects", objects)


# The agents' record of the connected cluster they belong to, which the Arc agents' Helm chart installs and
# connectedk8s reads before it connects (Azure/azure-cli-extensions, src/connectedk8s/azext_connectedk8s/
# custom.py, `connect`: `configmap.data["AZURE_RESOURCE_GROUP"]` / `["AZURE_RESOURCE_NAME"]`).
CLUSTERCONFIG = "/api/v1/namespaces/azure-arc/configmaps/azure-clusterconfig"


def cmd_connectedk8s(d: Double, words: list[str], opts: dict[str, list[str]]) -> JSON:
    sub_cmd = words[1] if len(words) > 1 else ""
    if sub_cmd not in ("show", "connect"):
        raise AzError(2, f"'{sub_cmd}' is not in the 'az connectedk8s' command group.")
    name = one(opts, "--name") or ""
    _login, rg, sub = _scope(d, opts, f"connectedk8s {sub_cmd}")
    key = f"{rg}/{name}"
    if sub_cmd == "show":
        cluster = d.peek().get("clusters", {}).get(key)
        if cluster is None:
            raise not_found("Microsoft.Kubernetes/connectedClusters", name, rg)
        return _show_cluster(cluster)
    return _connect(d, opts, name, rg, sub, key)


def _show_cluster(cluster: JSON) -> JSON:
    shown = {k: v for k, v in cluster.items() if not k.startswith("_")}
    if shown.get("provisioningState") == "Succeeded":
        shown["connectivityStatus"] = "Connected"
        shown["lastConnectivityTime"] = now_iso()
    return shown


def _connect(d: Double, opts: dict[str, list[str]], name: str, rg: str, sub: str, key: str) -> JSON:
    kubeconfig = one(opts, "--kube-config", required=False) or os.environ.get("KUBECONFIG") or ""
    if not kubeconfig or not Path(kubeconfig).is_file():
        raise AzError(1, f"Problem loading the kubeconfig file: [Errno 2] No such file: '{kubeconfig}'")
    if Path(kubeconfig).stat().st_mode & 0o077:
        raise AzError(1, f"Kubernetes configuration file is group-readable or world-readable: {kubeconfig}")
    for variable, (client, hosts) in CLIENT_DOWNLOADS.items():
        path = d.env.get(variable)
        if not path or not Path(path).is_file():
            _download(d, client, hosts)
    existing = d.peek().get("clusters", {}).get(key)
    server = _kube_server(kubeconfig)
    record = _kube_request(server, CLUSTERCONFIG)
    if record is not None:
        data = record.get("data") or {}
        rg_now, name_now = data.get("AZURE_RESOURCE_GROUP", ""), data.get("AZURE_RESOURCE_NAME", "")
        if existing is not None and (rg_now.lower(), name_now.lower()) == (rg.lower(), name.lower()):
            # The real connect re-puts the resource; the double keeps it as it is.
            return {k: v for k, v in existing.items() if not k.startswith("_")}
        raise AzError(
            1,
            "The kubernetes cluster you are trying to onboard is already onboarded to the resource group "
            f"'{rg_now}' with resource name '{name_now}'.",
        )
    if existing is not None:
        raise AzError(
            1,
            f"The connected cluster resource {name} already exists in the resource group {rg} and "
            "corresponds to a different Kubernetes cluster.",
        )
    tags = dict(t.split("=", 1) for t in opts.get("--tags", []) if "=" in t)
    cluster: JSON = {
        "agentPublicKeyCertificate": "MIICCgKCAgEA" + uuid.uuid4().hex,
        "agentVersion": "1.21.10",
        "connectivityStatus": "Connecting",
        "distribution": one(opts, "--distribution", required=False) or "generic",
        "id": _cluster_id(sub, rg, name),
        "identity": {"principalId": str(uuid.uuid4()), "tenantId": None, "type": "SystemAssigned"},
        "infrastructure": one(opts, "--infrastructure", required=False) or "generic",
        "kubernetesVersion": "1.30.6+k3s1",
        "lastConnectivityTime": None,
        "location": one(opts, "--location", required=False) or "eastus",
        "name": name,
        "offering": None,
        "provisioningState": "Creating",
        "resourceGroup": rg,
        "systemData": {"createdAt": now_iso(), "createdByType": "Application"},
        "tags": tags,
        "totalCoreCount": 2,
        "totalNodeCount": 1,
        "type": "microsoft.kubernetes/connectedclusters",
        "_kube_server": server,
        "_proxy": {
            k: one(opts, k, required=False) for k in ("--proxy-https", "--proxy-http", "--proxy-skip-range")
        },
    }
    with d.state() as doc:
        doc.setdefault("clusters", {})[key] = cluster
    _put_arm(d, cluster)
    print("This operation might take a while...", file=sys.stderr, flush=True)
    d.sleep("connectedk8s connect")
    record_doc = {
        "namespace": "azure-arc",
        "name": "azure-clusterconfig",
        "data": {"AZURE_RESOURCE_GROUP": rg, "AZURE_RESOURCE_NAME": name, "AZURE_SUBSCRIPTION_ID": sub},
    }
    _post_objects(server, "azure-arc", d.config.get("arc_pods") or DEFAULT_ARC_PODS, [record_doc])
    with d.state() as doc:
        doc["clusters"][key]["provisioningState"] = "Succeeded"
        result = {k: v for k, v in doc["clusters"][key].items() if not k.startswith("_")}
    _put_arm(d, result)
    return result


def _download(d: Double, client: str, hosts: list[str]) -> None:
    """What connectedk8s does without a local client: reach the download hosts (through HTTPS_PROXY when
    set, as requests would), so a proxy's CONNECT log shows it. Fails like the real one when unreachable."""
    import socket
    import urllib.parse

    print(f"Downloading {client} client for first time. This can take few minutes...", file=sys.stderr)
    proxy = d.env.get("HTTPS_PROXY") or d.env.get("https_proxy")
    for target in hosts:
        try:
            if proxy:
                parts = urllib.parse.urlsplit(proxy)
                with socket.create_connection((parts.hostname or "", parts.port or 3128), timeout=5) as sock:
                    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                    answer = sock.recv(200).decode("latin-1").split("\r\n", 1)[0]
                if " 200 " not in answer + " ":
                    raise OSError(f"proxy answered {answer!r}")
            else:
                host, _, port = target.rpartition(":")
                socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise AzError(1, f"Failed to download {client} client: {exc}") from exc


def _put_arm(d: Double, cluster: JSON) -> None:
    """The connected cluster as connect PUTs it into Resource Manager: into the ARM double (tests/doubles/
    arm_double.py, `POST /_double/resources`) when the config names it (`arm_url`, `arm_ca`)."""
    url = d.config.get("arm_url")
    if not url:
        return
    import ssl
    import urllib.request

    props = {k: v for k, v in cluster.items() if not k.startswith("_") and k not in _ENVELOPE}
    if props.get("provisioningState") == "Succeeded":
        props["connectivityStatus"] = "Connected"  # the agents are up (what `show` reports, above)
    body = {
        "id": cluster["id"],
        "properties": props,
        "location": cluster["location"],
        "tags": cluster["tags"],
    }
    req = urllib.request.Request(  # noqa: S310 - the ARM double's https URL from the test's config
        url + "/_double/resources",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=d.config.get("arm_ca"))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(req, timeout=5) as resp:
        resp.read()


# Top-level keys of an ARM resource (the rest of what az prints is `properties`).
_ENVELOPE = ("id", "name", "type", "location", "tags", "identity", "systemData", "resourceGroup")


def _cluster_child(
    d: Double, opts: dict[str, list[str]], context_cmd: str
) -> tuple[str, str, str, str, JSON, JSON]:
    """The common prologue of a resource on a connected cluster (an extension, a Flux configuration).

    Returns name, cluster name, resource group, the state key `rg/cluster/name`, the state and the
    cluster; the cluster must exist (ResourceNotFound like the real CLI otherwise).
    """
    name = one(opts, "--name") or ""
    cluster_name = one(opts, "--cluster-name") or ""
    one(opts, "--cluster-type")
    _login, rg, _sub = _scope(d, opts, context_cmd)
    state = d.peek()
    cluster = state.get("clusters", {}).get(f"{rg}/{cluster_name}")
    if cluster is None:
        raise not_found("Microsoft.Kubernetes/connectedClusters", cluster_name, rg)
    return name, cluster_name, rg, f"{rg}/{cluster_name}/{name}", state, cluster


def cmd_extension(d: Double, words: list[str], opts: dict[str, list[str]]) -> JSON:
    sub_cmd = words[1] if len(words) > 1 else ""
    if sub_cmd not in ("show", "create"):
        raise AzError(2, f"'{sub_cmd}' is not in the 'az k8s-extension' command group.")
    name, _cluster_name, rg, key, state, cluster = _cluster_child(d, opts, f"k8s-extension {sub_cmd}")
    ext = state.get("extensions", {}).get(key)
    if sub_cmd == "show":
        if ext is None:
            raise not_found("Microsoft.KubernetesConfiguration/extensions", name, rg)
        return dict(ext)
    ext_type = one(opts, "--extension-type") or ""
    if ext is not None:
        raise arm_error("ExtensionAlreadyExists", f"Extension '{name}' already exists on the cluster.")
    ext = {
        "aksAssignedIdentity": None,
        "autoUpgradeMinorVersion": True,
        "configurationProtectedSettings": {},
        "configurationSettings": {},
        "extensionType": ext_type,
        "id": f"{cluster['id']}/providers/Microsoft.KubernetesConfiguration/extensions/{name}",
        "name": name,
        "provisioningState": "Creating",
        "releaseTrain": "Stable",
        "scope": {"cluster": {"releaseNamespace": "flux-system"}, "namespace": None},
        "statuses": [],
        "version": one(opts, "--version", required=False) or "1.14.1",
    }
    with d.state() as doc:
        doc.setdefault("extensions", {})[key] = ext
    d.sleep("k8s-extension create")
    if ext_type.lower() == "microsoft.flux":
        _post_objects(cluster["_kube_server"], "flux-system", d.config.get("flux_pods") or DEFAULT_FLUX_PODS)
    with d.state() as doc:
        doc["extensions"][key]["provisioningState"] = "Succeeded"
        return dict(doc["extensions"][key])


def _kustomizations(values: list[str]) -> dict[str, JSON]:
    """`--kustomization name=a path=./a prune=true depends_on=["b"]`, repeated: the values of all of them."""
    out: dict[str, JSON] = {}
    current: JSON | None = None
    for token in values:
        key, _, value = token.partition("=")
        if key == "name":
            current = {"path": "", "prune": False, "dependsOn": [], "syncIntervalInSeconds": 600}
            out[value] = current
            continue
        if current is None:
            raise AzError(2, "usage error: --kustomization must start with name=")
        if key in ("depends_on", "dependsOn"):
            cleaned = value.strip("[]").replace('"', "").replace("'", "")
            current["dependsOn"] = [v.strip() for v in cleaned.split(",") if v.strip()]
        elif key == "prune":
            current["prune"] = value.lower() == "true"
        elif key in ("path", "sync_interval", "timeout", "retry_interval"):
            current[key] = value
        else:
            raise AzError(2, f"usage error: unknown kustomization parameter '{key}'")
    return out


def cmd_flux(d: Double, words: list[str], opts: dict[str, list[str]]) -> JSON:
    sub_cmd = words[2] if len(words) > 2 else ""
    if words[1:2] != ["flux"] or sub_cmd not in ("show", "create"):
        raise AzError(2, f"'{' '.join(words[1:])}' is not in the 'az k8s-configuration' command group.")
    name, cluster_name, rg, key, state, cluster = _cluster_child(d, opts, f"k8s-configuration flux {sub_cmd}")
    config = state.get("flux", {}).get(key)
    if sub_cmd == "show":
        if config is None:
            raise not_found("Microsoft.KubernetesConfiguration/fluxConfigurations", name, rg)
        return _show_flux(d, config)
    if config is not None:
        raise arm_error("Conflict", f"Flux configuration '{name}' already exists.")
    if not any(
        e.get("extensionType") == "microsoft.flux"
        for k, e in state.get("extensions", {}).items()
        if k.startswith(f"{rg}/{cluster_name}/")
    ):
        raise AzError(1, "The 'microsoft.flux' extension is not installed on the cluster.")
    kustomizations = _kustomizations(opts.get("--kustomization", []))
    if not kustomizations:
        raise AzError(2, "the following arguments are required: --kustomization")
    namespace = one(opts, "--namespace", required=False) or "default"
    local_ref = one(opts, "--local-auth-ref", required=False)
    missing_secret = local_ref is not None and not _secret_exists(
        cluster["_kube_server"], namespace, local_ref
    )
    config = {
        "complianceState": "Pending",
        "configurationProtectedSettings": {},
        "errorMessage": None,
        "gitRepository": {
            "url": one(opts, "--url"),
            "repositoryRef": {"branch": one(opts, "--branch", required=False) or "master"},
            "localAuthRef": local_ref,
            "httpsUser": one(opts, "--https-user", required=False),
            "syncIntervalInSeconds": 600,
            "timeoutInSeconds": 600,
        },
        "id": f"{cluster['id']}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}",
        "kustomizations": kustomizations,
        "name": name,
        "namespace": namespace,
        "provisioningState": "Creating",
        "scope": one(opts, "--scope", required=False) or "cluster",
        "sourceKind": "GitRepository",
        "statuses": [],
        "_created": time.time(),
        "_missing_secret": missing_secret,
    }
    with d.state() as doc:
        doc.setdefault("flux", {})[key] = config
    d.sleep("k8s-configuration flux create")
    with d.state() as doc:
        doc["flux"][key]["provisioningState"] = "Succeeded"
        doc["flux"][key]["_created"] = time.time()  # compliance counts from here
        config = dict(doc["flux"][key])
    return _show_flux(d, config)


def _secret_exists(server: str, namespace: str, name: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{server}/_double/objects", timeout=5) as resp:
            items = json.loads(resp.read())["items"]
    except (urllib.error.URLError, OSError):
        return False
    return any(
        i["kind"] == "Secret"
        and i["metadata"]["name"] == name
        and i["metadata"].get("namespace") == namespace
        for i in items
    )


def _show_flux(d: Double, config: JSON) -> JSON:
    shown = {k: v for k, v in config.items() if not k.startswith("_")}
    want: JSON = (d.config.get("compliance") or {}).get(config["name"], {})
    age = time.time() - float(config["_created"])
    if config.get("_missing_secret"):
        shown["complianceState"] = "Non-Compliant"
        shown["errorMessage"] = f"secret '{config['gitRepository']['localAuthRef']}' not found"
    elif config["provisioningState"] == "Succeeded" and age >= float(want.get("after", 0.3)):
        shown["complianceState"] = want.get("state", "Compliant")
        if shown["complianceState"] != "Compliant":
            shown["errorMessage"] = want.get("message", "reconciliation failed")
    shown["statuses"] = [
        {
            "appliedBy": None,
            "complianceState": shown["complianceState"],
            "kind": "Kustomization",
            "name": f"{config['name']}-{k}",
            "namespace": config["namespace"],
            "statusConditions": [{"message": shown.get("errorMessage") or "Applied", "type": "Ready"}],
        }
        for k in config["kustomizations"]
    ]
    return shown


def run(argv: list[str], env: dict[str, str]) -> tuple[int, Any]:
    """Execute one az invocation; returns (exit code, JSON result or None)."""
    d = Double(env)
    d.log(argv)
    args = [a for a in argv if a not in GLOBAL_FLAGS]
    # `-o/--output json` is the only output format the double prints.
    cleaned: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "--output", "--query"):
            skip = True
            continue
        cleaned.append(a)
    words, opts = parse(cleaned)
    if not words:
        raise AzError(2, "the double needs a command")
    _known_options(words, [a for a in cleaned if a.startswith("-") and not _is_negative_number(a)])
    group = words[0]
    if group == "version":
        return 0, cmd_version(d, opts)
    if group == "login":
        return 0, cmd_login(d, opts)
    if group == "logout":
        cmd_logout(d, opts)  # prints nothing, as az logout
        return 0, None
    if group == "account":
        return 0, cmd_account(d, words, opts)
    if group == "connectedk8s":
        return 0, cmd_connectedk8s(d, words, opts)
    if group == "k8s-extension":
        return 0, cmd_extension(d, words, opts)
    if group == "k8s-configuration":
        return 0, cmd_flux(d, words, opts)
    raise AzError(2, f"'{group}' is misspelled or not recognized by the system.")


# The simulated latencies this invocation slept (for AZ_DOUBLE_TIMES): one process, one invocation.
SLEPT: list[float] = []


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tests/doubles/az`."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code, result = run(args, dict(os.environ))
    except AzError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        code, result = exc.code, None
    if result is not None:
        print(json.dumps(result, indent=2))
    _log_times(args)
    return code


def _log_times(argv: list[str]) -> None:
    path = os.environ.get("AZ_DOUBLE_TIMES")
    if path:
        line = {"argv": argv, "started": process_started(), "ended": time.monotonic(), "slept": sum(SLEPT)}
        with Path(path).open("a") as fh:
            fh.write(json.dumps(line) + "\n")
