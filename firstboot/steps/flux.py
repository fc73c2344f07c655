"""flux: the Flux extension and the Flux configurations from metadata, each created once.

1. `az k8s-extension show` / `create --extension-type microsoft.flux` (skipped when present; one still
   being created by an interrupted run is waited for).
2. Watch the `flux-system` pods until Ready (reasons named when they are not, as in the arc step).
3. Per configuration of `flux.configurations`: `az k8s-configuration flux show`, and only when absent
   `flux create` with `--url --branch --kustomization name=.. path=.. prune=.. depends_on=[..]`.
   Git credentials never go on argv and never leave the node: they are written with the `kubernetes`
   client into a Secret `<name>-git-auth` in the configuration's namespace (Flux's keys: `username` /
   `password` for HTTPS, `identity` / `known_hosts` for SSH) and referenced with `--local-auth-ref`.
4. Compliance: each configuration's `complianceState` until `Compliant` (bounded); `Non-Compliant` is
   reported with Flux's message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from firstboot import azcli, kube
from firstboot.contract import ArcConfig, FluxConfiguration, GitCredential, OnboardingConfig
from firstboot.kube import client
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure
from firstboot.steps.arc import wait_pods

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="flux",
    needs=("arc",),
    timeout_seconds=2400,
    retry=RetryPolicy(deadline_seconds=2100, initial_wait=10, max_wait=120, max_attempts=6),
    servers_only=True,
    summary="installing Flux and its configurations",
)

EXTENSION_NAME = "flux"
NAMESPACE = "flux-system"
CLUSTER_TYPE = "connectedClusters"
EXTENSION_TIMEOUT = 1200.0
PODS_TIMEOUT = 600.0
COMPLIANCE_TIMEOUT = 600.0
POLL_SECONDS = 5.0
POLL_FIRST_SECONDS = 0.5


def _cluster_args(arc: ArcConfig) -> list[str]:
    return [
        "--cluster-name",
        arc.cluster_name,
        "--resource-group",
        arc.resource_group,
        "--cluster-type",
        CLUSTER_TYPE,
        "--subscription",
        arc.subscription_id,
    ]


def _show(ctx: Context, args: list[str], what: str) -> dict[str, Any] | None:
    result = azcli.run(ctx, args, description=what)
    if result.exit_code != 0 and azcli.is_not_found(result) and "connectedClusters/" not in result.stderr:
        return None
    doc = azcli.check_ok(result, what)
    return doc if isinstance(doc, dict) else {}


def extension_state(ctx: Context, arc: ArcConfig) -> dict[str, Any] | None:
    """The microsoft.flux extension resource of the cluster (None when it does not exist); read-only,
    shared by the step's check and doctor's flux-extension line."""
    return _show(
        ctx,
        ["k8s-extension", "show", "--name", EXTENSION_NAME, *_cluster_args(arc)],
        "az k8s-extension show",
    )


def _settled(resource: dict[str, Any], what: str, delete_hint: str) -> bool:
    """True when the resource succeeded; PermanentFailure when it failed (in progress: see wait_settled)."""
    state = str(resource.get("provisioningState", "")).lower()
    if state == "succeeded" or state in azcli.IN_PROGRESS:
        return True
    error = resource.get("errorMessage")
    raise PermanentFailure(
        f"{what} is in state {resource.get('provisioningState')}" + (f": {error}" if error else ""),
        f"delete it (`{delete_hint}`), then `firstboot run`",
    )


def ensure_extension(ctx: Context, config: OnboardingConfig) -> str:
    """Create the microsoft.flux extension unless it exists; returns what was done."""
    arc = azcli.require_arc(config)
    base = ["k8s-extension"]
    ident = ["--name", EXTENSION_NAME, *_cluster_args(arc)]
    existing = azcli.wait_settled(
        ctx,
        lambda: _show(ctx, [*base, "show", *ident], "az k8s-extension show"),
        "the Flux extension",
        EXTENSION_TIMEOUT * ctx.time_scale,
    )
    delete = f"az k8s-extension delete --name {EXTENSION_NAME} " + " ".join(_cluster_args(arc))
    if existing is not None:
        _settled(existing, "the Flux extension", delete)
        return "extension present"
    args = [*base, "create", *ident, "--extension-type", "microsoft.flux"]
    if config.flux.extension_version:
        args += ["--version", config.flux.extension_version, "--auto-upgrade-minor-version", "false"]
    ctx.progress("az k8s-extension create microsoft.flux")
    result = azcli.run(
        ctx,
        args,
        timeout=EXTENSION_TIMEOUT * ctx.time_scale,
        description="az k8s-extension create",
        detach_as="k8s-extension-create",
    )
    if result.exit_code != 0 and "already exists" in result.stderr.lower():
        return "extension present (created by an earlier run)"
    created = azcli.check_ok(result, "az k8s-extension create")
    if isinstance(created, dict):
        _settled(created, "the Flux extension", delete)
    return "extension created"


def secret_name(cfg: FluxConfiguration) -> str:
    """The local auth Secret of a configuration."""
    return f"{cfg.name}-git-auth"


def _secret_data(cred: GitCredential) -> dict[str, str]:
    data: dict[str, str] = {}
    if cred.https_key is not None:
        data["username"] = cred.https_user or "git"
        data["password"] = cred.https_key.get_secret_value()
    if cred.ssh_private_key is not None:
        data["identity"] = cred.ssh_private_key.get_secret_value()
        if cred.known_hosts:
            data["known_hosts"] = cred.known_hosts
    return data


def write_git_secret(ctx: Context, cfg: FluxConfiguration, cred: GitCredential) -> str | None:
    """Create or replace the configuration's local auth Secret; its name, or None without credentials."""
    data = _secret_data(cred)
    if not data:
        return None
    name = secret_name(cfg)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/managed-by": "arcbake"}),
        string_data=data,
        type="Opaque",
    )
    try:
        with kube.client_from(ctx.path(kube.KUBECONFIG)) as api:
            core = client.CoreV1Api(api)
            _ensure_namespace(core, cfg.namespace)
            try:
                core.create_namespaced_secret(cfg.namespace, body, _request_timeout=15)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
                core.replace_namespaced_secret(name, cfg.namespace, body, _request_timeout=15)
    except kube.api_errors() as exc:
        # The exception text may quote the request body: say what failed, not what was sent.
        status = getattr(exc, "status", None)
        raise TransientFailure(
            f"cannot write the Git credentials Secret {cfg.namespace}/{name}"
            + (f" (API status {status})" if status else f" ({type(exc).__name__})"),
            "check the API server (`firstboot doctor`, k3s link)",
        ) from None
    return name


def _ensure_namespace(core: client.CoreV1Api, namespace: str) -> None:
    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)), _request_timeout=15
        )
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def create_args(arc: ArcConfig, cfg: FluxConfiguration, local_ref: str | None) -> list[str]:
    """argv (after `az`) of `k8s-configuration flux create` for one configuration; no secret in it."""
    args = [
        "k8s-configuration",
        "flux",
        "create",
        "--name",
        cfg.name,
        *_cluster_args(arc),
        "--namespace",
        cfg.namespace,
        "--scope",
        cfg.scope,
        "--url",
        cfg.url,
        "--branch",
        cfg.branch,
    ]
    for k in cfg.kustomizations:
        spec = [f"name={k.name}", f"path={k.path}", f"prune={str(k.prune).lower()}"]
        if k.depends_on:
            spec.append("depends_on=[" + ",".join(f'"{d}"' for d in k.depends_on) + "]")
        if k.sync_interval:
            spec.append(f"sync_interval={k.sync_interval}")
        args += ["--kustomization", *spec]
    if local_ref:
        args += ["--local-auth-ref", local_ref]
    return args


def _show_config(ctx: Context, arc: ArcConfig, cfg: FluxConfiguration) -> dict[str, Any] | None:
    args = ["k8s-configuration", "flux", "show", "--name", cfg.name, *_cluster_args(arc)]
    return _show(ctx, args, f"az k8s-configuration flux show {cfg.name}")


def ensure_configuration(ctx: Context, config: OnboardingConfig, cfg: FluxConfiguration) -> str:
    """Create one Flux configuration unless it exists."""
    arc = azcli.require_arc(config)
    delete = f"az k8s-configuration flux delete --name {cfg.name} " + " ".join(_cluster_args(arc))
    existing = azcli.wait_settled(
        ctx,
        lambda: _show_config(ctx, arc, cfg),
        f"Flux configuration {cfg.name}",
        EXTENSION_TIMEOUT * ctx.time_scale,
    )
    if existing is not None:
        _settled(existing, f"Flux configuration {cfg.name}", delete)
        return "present"
    cred = ctx.secrets.git.get(cfg.name) if ctx.secrets else None
    local_ref = write_git_secret(ctx, cfg, cred) if cred else None
    ctx.progress(f"az k8s-configuration flux create {cfg.name}")
    result = azcli.run(
        ctx,
        create_args(arc, cfg, local_ref),
        timeout=EXTENSION_TIMEOUT * ctx.time_scale,
        description="az flux create",
        detach_as=f"flux-create-{cfg.name}",
    )
    if result.exit_code != 0 and "already exists" in result.stderr.lower():
        return "present (created by an earlier run)"
    created = azcli.check_ok(result, f"az k8s-configuration flux create {cfg.name}")
    if isinstance(created, dict):
        _settled(created, f"Flux configuration {cfg.name}", delete)
    return "created"


def _compliance_problem(doc: dict[str, Any]) -> str:
    messages = [doc.get("errorMessage") or ""]
    for status in doc.get("statuses") or []:
        if status.get("complianceState") not in (None, "Compliant"):
            conds = status.get("statusConditions") or []
            messages += [f"{status.get('kind')}/{status.get('name')}: {c.get('message')}" for c in conds]
    return "; ".join(m for m in dict.fromkeys(messages) if m) or "no message"


def wait_compliant(ctx: Context, config: OnboardingConfig) -> None:
    """Poll each configuration's complianceState until Compliant; fail on Non-Compliant or a timeout."""
    arc = azcli.require_arc(config)
    pending = list(config.flux.configurations)
    deadline = time.monotonic() + COMPLIANCE_TIMEOUT * ctx.time_scale
    polls = 0
    while True:
        states: dict[str, dict[str, Any]] = {}
        for cfg in pending:
            doc = _show_config(ctx, arc, cfg)
            if doc is None:
                raise TransientFailure(
                    f"Flux configuration {cfg.name} disappeared", "run `firstboot run` again"
                )
            states[cfg.name] = doc
        bad = {n: d for n, d in states.items() if d.get("complianceState") == "Non-Compliant"}
        if bad:
            detail = "; ".join(f"{n}: {_compliance_problem(d)}" for n, d in bad.items())
            raise TransientFailure(
                f"Flux configuration(s) Non-Compliant: {detail}",
                "check the repository URL, branch, paths and credentials (`kubectl -n flux-system get "
                "gitrepositories,kustomizations`)",
            )
        pending = [c for c in pending if states[c.name].get("complianceState") != "Compliant"]
        if not pending:
            return
        ctx.progress(f"waiting for Flux compliance: {', '.join(c.name for c in pending)}")
        # Azure has no watch for compliance: poll, soon at first (Flux often reconciles in seconds), then
        # less often.
        interval = min(POLL_SECONDS, POLL_FIRST_SECONDS * 2 ** (polls // 2)) * ctx.time_scale
        polls += 1
        if time.monotonic() >= deadline or ctx.cancel.wait(interval):
            names = ", ".join(f"{c.name} ({states[c.name].get('complianceState')})" for c in pending)
            raise TransientFailure(
                f"Flux configuration(s) not yet Compliant: {names}",
                "check `kubectl -n flux-system get gitrepositories,kustomizations`",
            )


def run(ctx: Context) -> None:
    """Install the extension, create the configurations (once), wait for pods and compliance."""
    config = ctx.require_config()
    if not config.flux.configurations:
        LOG.info("flux: no configurations in the metadata; nothing to do")
        return
    kube.prewarm()
    azcli.login(ctx, azcli.require_arc(config))
    LOG.info("flux: %s", ensure_extension(ctx, config))
    wait_pods(ctx, NAMESPACE, PODS_TIMEOUT * ctx.time_scale, "Flux controllers")
    for cfg in config.flux.configurations:
        LOG.info("flux: configuration %s %s", cfg.name, ensure_configuration(ctx, config, cfg))
    wait_compliant(ctx, config)


def check(ctx: Context) -> CheckResult:
    """Read-only: the extension, the flux-system pods and each configuration's compliance."""
    config = ctx.require_config()
    if config.arc is None or not config.flux.configurations:
        return CheckResult(True, "no Flux configurations")
    arc = config.arc
    try:
        ext = extension_state(ctx, arc)
        if ext is None or str(ext.get("provisioningState")).lower() != "succeeded":
            state = "missing" if ext is None else ext.get("provisioningState")
            return CheckResult(False, f"Flux extension {state}", "run `firstboot run`")
        states = {cfg.name: _show_config(ctx, arc, cfg) for cfg in config.flux.configurations}
    except (PermanentFailure, TransientFailure) as exc:
        return CheckResult(False, exc.message, exc.remedy)
    missing = [n for n, d in states.items() if d is None]
    if missing:
        return CheckResult(
            False, f"Flux configuration(s) missing: {', '.join(missing)}", "run `firstboot run`"
        )
    bad = {n: d for n, d in states.items() if d and d.get("complianceState") != "Compliant"}
    if bad:
        detail = "; ".join(
            f"{n}: {d.get('complianceState')} ({_compliance_problem(d)})" for n, d in bad.items()
        )
        return CheckResult(
            False, f"Flux not compliant: {detail}", "check `kubectl -n flux-system get kustomizations`"
        )
    return CheckResult(True, f"Flux extension installed, {len(states)} configuration(s) Compliant")
