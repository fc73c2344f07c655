"""Running the Azure CLI for `az connectedk8s connect` (the one thing only az does: it installs the Arc
agents with helm); everything else in Azure goes through the SDK (`firstboot.arm`).

- `AZURE_CONFIG_DIR` is `/var/lib/arcbake/azure` (0700, root-only): the sign-in token cache lives there,
  not in root's home. `HELM_CLIENT_PATH` and `KUBECTL_CLIENT_PATH` name the image's helm (baked, pinned,
  sha256-verified) and K3s's kubectl: without them connectedk8s downloads helm from MCR into
  `~/.azure/helm` and runs `az aks install-cli` (kubectl and kubelogin from the internet)
  (Azure/azure-cli-extensions src/connectedk8s/azext_connectedk8s/_utils.py, `install_helm_client()` and
  `install_kubectl_client()`: each returns the variable's value first). Extensions baked into the image
  are found through `AZURE_EXTENSION_DIR` when the unit's environment sets it (it is passed through).
- `login()` passes the service principal secret as `--password @FILE` (az reads the value from the file;
  removed at once) and a certificate as `--certificate FILE` (az stores the path and reads the file again on
  every call: kept until `sign_out()`); both 0600 in the 0700 config dir.
  Nothing secret is ever on argv (`subp` refuses it anyway) and every output is redacted.
- `sign_out()` runs once connect is over (success or failure): az keeps the signed-in service principal's
  secret (or certificate path) in `service_principal_entries.json` and its tokens in `msal_token_cache.json`
  in the config dir (Azure/azure-cli src/azure-cli-core/azure/cli/core/auth/identity.py, `Identity.__init__`
  and `login_with_service_principal`; `.json` where encryption is off, `.bin`/`.sig` where it is on,
  persistence.py `file_extensions`). `az logout` only drops the entry and tokens from those files, so the
  files themselves are removed afterwards: no service principal secret stays on disk after onboarding.
- `classify()` turns a failed az call into PermanentFailure (rejected credentials, unknown tenant,
  subscription or resource group, missing permission or provider registration, a missing extension, usage
  errors) or TransientFailure (timeouts, throttling, 5xx, network), each with a remedy. `firstboot.arm`
  classifies the SDK's errors with the same `PERMANENT` rules.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firstboot import subp
from firstboot.contract import ArcAuth, ArcConfig, OnboardingConfig
from firstboot.fsutil import private_dir
from firstboot.step import Context, PermanentFailure, StepFailure, TransientFailure

LOG = logging.getLogger(__name__)


def require_arc(config: OnboardingConfig) -> ArcConfig:
    """The config's arc section, which every Azure step needs (a server without one is a fleet error)."""
    if config.arc is None:
        raise PermanentFailure("the config has no arc section", "a server node needs arc: fix the fleet file")
    return config.arc


AZ_CONFIG_DIR = "/var/lib/arcbake/azure"
# EL's extracted system trust store (update-ca-trust), which includes the proxy CA once installed.
SYSTEM_CA_BUNDLE = "/etc/pki/tls/certs/ca-bundle.crt"
# Exit code of `az ... show` for a resource that does not exist.
EXIT_NOT_FOUND = 3
DEFAULT_TIMEOUT = 180.0
# The image's helm (templates/scripts/20-install-azure-cli.sh.j2) and K3s's kubectl (a link to k3s).
HELM_PATH = "/usr/local/bin/helm"
KUBECTL_PATH = "/usr/local/bin/kubectl"

# (config dir, tenant, client) signed in by this process (a retried connect signs in once).
_SIGNED_IN: set[tuple[str, str, str]] = set()

REMEDY_REDEPLOY = "fix the fleet file's secrets and run `builder deploy` again, then `firstboot run`"


@dataclass(frozen=True)
class Rule:
    """A permanent az error: the pattern in its output, what it means, what to do."""

    pattern: re.Pattern[str]
    meaning: str
    remedy: str


def _rule(pattern: str, meaning: str, remedy: str) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), meaning, remedy)


PERMANENT = (
    _rule(
        r"AADSTS7000215|AADSTS7000222|invalid client secret|client secret.*expired",
        "the service principal secret was rejected",
        "create a new client secret for arc.client_id, put it in the fleet's secrets (sp_secret); "
        + REMEDY_REDEPLOY,
    ),
    _rule(
        r"AADSTS700016|Application with identifier .* was not found",
        "the service principal arc.client_id does not exist in tenant arc.tenant_id",
        "check arc.client_id and arc.tenant_id in the fleet file; " + REMEDY_REDEPLOY,
    ),
    _rule(
        r"AADSTS90002|AADSTS900023|Tenant .* not found",
        "the tenant arc.tenant_id does not exist",
        "check arc.tenant_id in the fleet file",
    ),
    _rule(
        r"AADSTS700027|AADSTS700024|AADSTS50012|Client assertion|Could not deserialize key data",
        "the service principal certificate was rejected",
        "upload the certificate to the app registration or fix sp_certificate_pem (PEM with private key); "
        + REMEDY_REDEPLOY,
    ),
    _rule(
        r"ResourceGroupNotFound",
        "the resource group arc.resource_group does not exist",
        "create the resource group (`az group create`) or fix arc.resource_group in the fleet file",
    ),
    _rule(
        r"AuthorizationFailed|does not have authorization|LinkedAuthorizationFailed",
        "the service principal lacks permission on the resource group",
        "grant arc.client_id the 'Kubernetes Cluster - Azure Arc Onboarding' role on the resource group "
        "(and 'Contributor' for the Flux extension)",
    ),
    _rule(
        r"SubscriptionNotFound|doesn't exist in cloud|subscription .* not found",
        "the subscription arc.subscription_id is unknown or not visible to the service principal",
        "check arc.subscription_id and the service principal's role assignments",
    ),
    _rule(
        r"MissingSubscriptionRegistration|not registered to use namespace",
        "an Azure resource provider is not registered in the subscription",
        "run `az provider register --namespace Microsoft.Kubernetes`, `Microsoft.KubernetesConfiguration` "
        "and `Microsoft.ExtendedLocation` once for the subscription",
    ),
    _rule(
        r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|self[- ]signed certificate",
        "a TLS certificate on the way to Azure is not trusted (a TLS-intercepting proxy?)",
        "put the proxy's CA in proxy.ca_bundle_pem (it is installed and given to az as REQUESTS_CA_BUNDLE); "
        "`firstboot doctor` (connectivity link) tells an intercepting proxy apart",
    ),
    _rule(
        r"group-readable|world-readable",
        "the kubeconfig is readable by others and az refuses it",
        "chmod 0600 /etc/rancher/k3s/k3s.yaml (and keep write-kubeconfig-mode: 0600)",
    ),
    _rule(
        r"is misspelled or not recognized|is not in the 'az|extension .* not installed|No module named",
        "an Azure CLI extension (connectedk8s, k8s-extension, k8s-configuration) is missing",
        "the image must bake the az extensions: rebuild the template with `builder build`",
    ),
    _rule(
        r"InvalidParameter|InvalidTemplate|BadRequest|ValidationError|usage error",
        "Azure rejected the request as invalid",
        "check the arc and flux sections of the fleet file against the message",
    ),
)


def config_dir(ctx: Context) -> Path:
    """`/var/lib/arcbake/azure` under the root, created 0700."""
    path = ctx.path(AZ_CONFIG_DIR)
    private_dir(path)
    return path


def environment(ctx: Context) -> dict[str, str]:
    """The child environment for az: the context's (proxy, PATH) plus the config dir, the local helm and
    kubectl (nothing downloaded), no telemetry.

    With a proxy CA in the config, az (Python requests, which trusts certifi's bundle, not the system's)
    gets `REQUESTS_CA_BUNDLE` pointing at the system bundle the proxy step's `update-ca-trust` rebuilt.
    """
    env = dict(ctx.env)
    env.update(
        AZURE_CONFIG_DIR=str(config_dir(ctx)),
        HELM_CLIENT_PATH=str(ctx.path(HELM_PATH)),
        KUBECTL_CLIENT_PATH=str(ctx.path(KUBECTL_PATH)),
        AZURE_CORE_COLLECT_TELEMETRY="false",
        AZURE_CORE_NO_COLOR="true",
        AZURE_CORE_SURVEY_MESSAGE="false",
    )
    if ctx.config is not None and ctx.config.proxy.ca_bundle_pem and "REQUESTS_CA_BUNDLE" not in env:
        env["REQUESTS_CA_BUNDLE"] = str(ctx.path(SYSTEM_CA_BUNDLE))
    return env


def run(
    ctx: Context,
    args: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    description: str = "",
    detach_as: str | None = None,
) -> subp.Result:
    """`az ARGS --output json --only-show-errors`, never raising for an exit code (see `check_ok`).

    `detach_as` (for the long creating calls): az writes its output to files under
    `/var/lib/arcbake/azure/ops/NAME/` instead of pipes, so when firstboot is killed mid-call az finishes
    its work and the next run finds the result through `show` (never a second create).
    Raises PermanentFailure when az is missing and TransientFailure when it times out.
    """
    argv = ["az", *args, "--output", "json", "--only-show-errors"]
    what = description or "az " + " ".join(args[:2])
    try:
        return subp.run(
            argv,
            timeout=timeout,
            env=environment(ctx),
            secrets=ctx.secret_values(),
            description=what,
            check=False,
            output_dir=config_dir(ctx) / "ops" / detach_as if detach_as else None,
        )
    except subp.ProcessExecutionError as exc:
        if exc.not_found:
            raise PermanentFailure(
                "the Azure CLI (az) is not installed", "the image must bake az: rebuild with `builder build`"
            ) from None
        raise TransientFailure(
            f"{what} did not finish within {timeout:g} s",
            "check the proxy and the connectivity link (`firstboot doctor`); the next attempt resumes",
        ) from None


def parse_json(result: subp.Result) -> Any:
    """The JSON az printed (None when it printed nothing or not JSON)."""
    try:
        return json.loads(result.stdout) if result.stdout.strip() else None
    except json.JSONDecodeError:
        return None


def error_text(result: subp.Result) -> str:
    """The ERROR lines of az's stderr (or its last line), for messages."""
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR")]
    return " ".join(errors or lines[-1:])[:600] or f"exit code {result.exit_code}"


def is_not_found(result: subp.Result) -> bool:
    """`az ... show` of a resource that does not exist (exit 3, or ResourceNotFound in older releases)."""
    return result.exit_code == EXIT_NOT_FOUND or bool(
        re.search(r"ResourceNotFound|\(NotFound\)|was not found", result.stderr)
    )


def classify(result: subp.Result, what: str) -> StepFailure:
    """A Permanent- or TransientFailure for a failed az call."""
    text = f"{result.stderr}\n{result.stdout}"
    for rule in PERMANENT:
        if rule.pattern.search(text):
            return PermanentFailure(f"{what} failed: {rule.meaning}: {error_text(result)}", rule.remedy)
    if result.exit_code == 2:
        return PermanentFailure(
            f"{what} failed (usage error): {error_text(result)}",
            "the baked az or its extensions do not match what firstboot expects: rebuild the template",
        )
    return TransientFailure(
        f"{what} failed: {error_text(result)}",
        "a transient Azure or network error: it is retried; if it persists check the proxy and the "
        "connectivity link (`firstboot doctor`)",
    )


def check_ok(result: subp.Result, what: str) -> Any:
    """The JSON of a successful call; the classified failure otherwise."""
    if result.exit_code != 0:
        raise classify(result, what)
    return parse_json(result)


# The secret's @FILE (read by az while parsing argv, removed at once) and the certificate file (read by az on
# every later call: its store entry keeps the path, identity.py `ServicePrincipalAuth`; removed by sign_out).
SECRET_FILE = ".sp-credential"  # noqa: S105 - a file name, not a value
CERTIFICATE_FILE = ".sp-certificate"


@contextlib.contextmanager
def secret_file(ctx: Context, name: str, content: str, keep: bool = False) -> Iterator[Path]:
    """`content` in a 0600 file `name` in the 0700 az config dir, removed afterwards unless `keep`."""
    path = config_dir(ctx) / name
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        yield path
    finally:
        if not keep:
            path.unlink(missing_ok=True)


# az's credential stores in its config dir, every extension persistence.py may use (see the docstring).
CREDENTIAL_STORES = ("service_principal_entries", "msal_token_cache")
CREDENTIAL_SUFFIXES = (".json", ".bin", ".sig", ".json.lockfile", ".bin.lockfile", ".sig.lockfile")


def credential_files(ctx: Context) -> list[Path]:
    """az's credential files present in the config dir."""
    base = ctx.path(AZ_CONFIG_DIR)
    paths = [base / f"{name}{suffix}" for name in CREDENTIAL_STORES for suffix in CREDENTIAL_SUFFIXES]
    # Ours too: the certificate az still reads, a secret file left by a crash during `az login`.
    paths += [base / CERTIFICATE_FILE, base / SECRET_FILE]
    return [p for p in paths if p.exists() or p.is_symlink()]


def sign_out(ctx: Context, arc: ArcConfig) -> None:
    """`az logout` for the service principal, then its credential files removed (idempotent).

    Does nothing when az holds no credentials (no az process on a re-run that did not sign in). A failing
    or hanging logout is logged and the files are removed all the same: the removal is what leaves no trace
    (so this raises only on an OSError).
    """
    _SIGNED_IN.discard((str(ctx.path(AZ_CONFIG_DIR)), arc.tenant_id, arc.client_id))
    if not credential_files(ctx):
        return
    try:
        result = run(ctx, ["logout", "--username", arc.client_id], description="az logout")
    except StepFailure as exc:
        LOG.warning("az logout: %s; removing its credential files anyway", exc.message)
    else:
        if result.exit_code != 0:
            LOG.warning("az logout failed (%s); removing its credential files anyway", error_text(result))
    for path in credential_files(ctx):
        path.unlink(missing_ok=True)


def login(ctx: Context, arc: ArcConfig) -> None:
    """Sign in the service principal (once per process and config dir).

    No `az account set`: every ARM call names `--subscription` itself (one az process less per run).
    """
    key = (str(config_dir(ctx)), arc.tenant_id, arc.client_id)
    if key in _SIGNED_IN:
        return
    secrets = ctx.secrets
    if arc.auth is ArcAuth.CERTIFICATE:
        material = secrets.sp_certificate_pem if secrets else None
        flag, prefix = "--certificate", ""
    else:
        material = secrets.sp_secret if secrets else None
        flag, prefix = "--password", "@"
    if material is None:
        raise PermanentFailure(
            f"no service principal {'certificate' if prefix == '' else 'secret'} in the secrets",
            "add it to the fleet's secrets; " + REMEDY_REDEPLOY,
        )
    certificate = prefix == ""
    name = CERTIFICATE_FILE if certificate else SECRET_FILE
    with secret_file(ctx, name, material.get_secret_value(), keep=certificate) as path:
        args = ["login", "--service-principal", "--username", arc.client_id, flag, f"{prefix}{path}"]
        result = run(ctx, [*args, "--tenant", arc.tenant_id], description="az login")
    check_ok(result, "az login --service-principal")
    _SIGNED_IN.add(key)
