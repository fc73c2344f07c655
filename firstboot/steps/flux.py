"""flux: the Flux extension and the Flux configurations from metadata, each created once, through the SDK.

1. The `microsoft.flux` cluster extension: read, and only when absent created (a PUT through
   `azure-mgmt-kubernetesconfiguration-extensions`); one still being created by an interrupted run is
   waited for.
2. Watch the `flux-system` pods until Ready (reasons named when they are not, as in the arc step), then the
   extension's provisioningState until Succeeded.
3. The configurations: ONE list of the cluster's Flux configurations, then a PUT for each one of
   `flux.configurations` that is absent, on a small bounded pool (`CREATE_WORKERS`): GitRepository with the
   branch, kustomizations with path, prune, dependsOn and sync interval. Git credentials never leave the
   node: they are written with the `kubernetes` client into a Secret `<name>-git-auth` in the
   configuration's namespace (Flux's keys: `username` / `password` for HTTPS, `identity` / `known_hosts` for
   SSH) and referenced as `gitRepository.localAuthRef`.
4. Compliance: ONE list per poll round (soon at first, then every 5 s) until every configuration is
   `Compliant` (bounded); `Non-Compliant` is reported with Flux's messages.

Rejected credentials, missing permissions or an invalid request fail at once (`firstboot.arm.classify`);
throttling, 5xx and conflicts are retried by the SDK and then by the engine.
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from firstboot import arm, azcli, kube
from firstboot.contract import ArcConfig, FluxConfiguration, GitCredential, OnboardingConfig
from firstboot.kube import client
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

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
EXTENSION_TYPE = "microsoft.flux"
NAMESPACE = "flux-system"
EXTENSION_TIMEOUT = 1200.0
PODS_TIMEOUT = 600.0
COMPLIANCE_TIMEOUT = 600.0
PROGRESS_SECONDS = 30.0
# Concurrent PUTs of Flux configurations: enough to overlap Resource Manager's latency, few enough to stay
# clear of its per-principal write throttling (1,200 writes per hour per subscription and principal).
CREATE_WORKERS = 4
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _delete_hint(arc_name: str, resource_group: str, what: str) -> str:
    return f"delete {what} in the Azure portal or with az ({resource_group}/{arc_name}), then `firstboot run`"


def _settled(resource: dict[str, Any], what: str, hint: str) -> None:
    """Nothing when the resource succeeded or is still in progress; PermanentFailure when it failed."""
    state = arm.provisioning_state(resource)
    if state in ("succeeded", "") or state in arm.IN_PROGRESS:
        return
    props = resource.get("properties") or {}
    error = props.get("errorMessage") or ""
    raise PermanentFailure(
        f"{what} is in state {props.get('provisioningState')}" + (f": {error}" if error else ""), hint
    )


def extension_state(ctx: Context, arc: ArcConfig) -> dict[str, Any] | None:
    """The microsoft.flux extension's properties (provisioningState, errorMessage, statuses, version), None
    when it does not exist; read-only, shared by the step's check and doctor's flux-extension line."""
    del arc  # the session is the config's (arc is its section): kept for doctor's call
    doc = arm.session(ctx).extension(EXTENSION_NAME)
    return None if doc is None else dict(doc.get("properties") or {})


def _extension_body(config: OnboardingConfig) -> dict[str, Any]:
    props: dict[str, Any] = {"extensionType": EXTENSION_TYPE, "autoUpgradeMinorVersion": True}
    if config.flux.extension_version:
        props.update(version=config.flux.extension_version, autoUpgradeMinorVersion=False)
    return {"properties": props}


def ensure_extension(ctx: Context, session: arm.ArmSession, config: OnboardingConfig) -> str:
    """Create the microsoft.flux extension unless it exists; returns what was done."""
    arc = azcli.require_arc(config)
    hint = _delete_hint(arc.cluster_name, arc.resource_group, f"the extension {EXTENSION_NAME}")
    existing = arm.wait_settled(
        ctx,
        lambda: session.extension(EXTENSION_NAME),
        "the Flux extension",
        EXTENSION_TIMEOUT * ctx.time_scale,
    )
    if existing is not None:
        _settled(existing, "the Flux extension", hint)
        return "extension present"
    ctx.progress(f"creating the {EXTENSION_TYPE} extension")
    _settled(session.create_extension(EXTENSION_NAME, _extension_body(config)), "the Flux extension", hint)
    return "extension created"


def extension_succeeded(ctx: Context, session: arm.ArmSession, config: OnboardingConfig) -> None:
    """Wait until the extension's provisioningState is Succeeded (its pods are Ready by now)."""
    arc = azcli.require_arc(config)
    hint = _delete_hint(arc.cluster_name, arc.resource_group, f"the extension {EXTENSION_NAME}")
    doc = arm.wait_settled(
        ctx,
        lambda: session.extension(EXTENSION_NAME),
        "the Flux extension",
        EXTENSION_TIMEOUT * ctx.time_scale,
    )
    if doc is None:
        raise TransientFailure("the Flux extension disappeared", "run `firstboot run` again")
    _settled(doc, "the Flux extension", hint)


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


def sync_seconds(value: str) -> int:
    """A Flux interval (`10m`, `1h30m`, `45s`, or plain seconds) in seconds, as Resource Manager takes it."""
    if value.isdigit():
        return int(value)
    match = _DURATION.match(value)
    if not value or match is None:
        raise PermanentFailure(
            f"flux sync_interval {value!r} is not a duration like 10m, 1h30m or 45s",
            "fix the kustomization's sync_interval in the fleet file",
        )
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def configuration_body(cfg: FluxConfiguration, local_ref: str | None) -> dict[str, Any]:
    """The Resource Manager body of one Flux configuration (fluxConfigurations 2025-04-01); no secret."""
    git: dict[str, Any] = {"url": cfg.url, "repositoryRef": {"branch": cfg.branch}}
    if local_ref:
        git["localAuthRef"] = local_ref
    kustomizations: dict[str, Any] = {}
    for k in cfg.kustomizations:
        entry: dict[str, Any] = {"path": k.path, "prune": k.prune, "dependsOn": list(k.depends_on)}
        if k.sync_interval:
            entry["syncIntervalInSeconds"] = sync_seconds(k.sync_interval)
        kustomizations[k.name] = entry
    return {
        "properties": {
            "scope": cfg.scope,
            "namespace": cfg.namespace,
            "sourceKind": "GitRepository",
            "gitRepository": git,
            "kustomizations": kustomizations,
        }
    }


def _create(ctx: Context, session: arm.ArmSession, cfg: FluxConfiguration) -> None:
    cred = ctx.secrets.git.get(cfg.name) if ctx.secrets else None
    local_ref = write_git_secret(ctx, cfg, cred) if cred else None
    created = session.create_configuration(cfg.name, configuration_body(cfg, local_ref))
    arc = session.arc
    hint = _delete_hint(arc.cluster_name, arc.resource_group, f"the Flux configuration {cfg.name}")
    _settled(created, f"Flux configuration {cfg.name}", hint)


def ensure_configurations(ctx: Context, session: arm.ArmSession, config: OnboardingConfig) -> list[str]:
    """Create the configurations that do not exist (one list, then PUTs on the pool); the created names."""
    existing = session.configurations()
    arc = session.arc
    todo = []
    for cfg in config.flux.configurations:
        doc = existing.get(cfg.name)
        if doc is None:
            todo.append(cfg)
        else:
            hint = _delete_hint(arc.cluster_name, arc.resource_group, f"the Flux configuration {cfg.name}")
            _settled(doc, f"Flux configuration {cfg.name}", hint)
    if todo:
        ctx.progress(f"creating {len(todo)} Flux configuration(s)")
        with ThreadPoolExecutor(
            max_workers=min(CREATE_WORKERS, len(todo)), thread_name_prefix="flux"
        ) as pool:
            # list() re-raises the first failure once every PUT has finished.
            list(pool.map(lambda cfg: _create(ctx, session, cfg), todo))
    return [c.name for c in todo]


def _props(doc: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = doc.get("properties") or {}
    return props


def _compliance_problem(doc: dict[str, Any]) -> str:
    props = _props(doc)
    messages = [props.get("errorMessage") or ""]
    for status in props.get("statuses") or []:
        if status.get("complianceState") not in (None, "Compliant"):
            conds = status.get("statusConditions") or []
            messages += [f"{status.get('kind')}/{status.get('name')}: {c.get('message')}" for c in conds]
    return "; ".join(m for m in dict.fromkeys(messages) if m) or "no message"


def _round(session: arm.ArmSession, config: OnboardingConfig) -> dict[str, str]:
    """One poll round: one list; the state of each configured configuration (PermanentFailure on a failed
    one, TransientFailure on a missing or Non-Compliant one)."""
    docs = session.configurations()
    arc = session.arc
    states: dict[str, str] = {}
    bad: dict[str, dict[str, Any]] = {}
    for cfg in config.flux.configurations:
        doc = docs.get(cfg.name)
        if doc is None:
            raise TransientFailure(f"Flux configuration {cfg.name} disappeared", "run `firstboot run` again")
        hint = _delete_hint(arc.cluster_name, arc.resource_group, f"the Flux configuration {cfg.name}")
        _settled(doc, f"Flux configuration {cfg.name}", hint)
        state = str(_props(doc).get("complianceState") or "Unknown")
        if arm.provisioning_state(doc) != "succeeded":
            state = "Pending"
        states[cfg.name] = state
        if state == "Non-Compliant":
            bad[cfg.name] = doc
    if bad:
        detail = "; ".join(f"{n}: {_compliance_problem(d)}" for n, d in bad.items())
        raise TransientFailure(
            f"Flux configuration(s) Non-Compliant: {detail}",
            "check the repository URL, branch, paths and credentials (`kubectl -n flux-system get "
            "gitrepositories,kustomizations`)",
        )
    return states


def wait_compliant(ctx: Context, session: arm.ArmSession, config: OnboardingConfig) -> None:
    """List the configurations once per round until all are Compliant; fail on Non-Compliant or a timeout."""
    deadline = time.monotonic() + COMPLIANCE_TIMEOUT * ctx.time_scale
    said, said_at = "", 0.0
    for interval in arm.poll_intervals(ctx):
        states = _round(session, config)
        pending = {n: s for n, s in states.items() if s != "Compliant"}
        if not pending:
            return
        line = f"waiting for Flux compliance of {len(pending)} configuration(s): {_names(pending)}"
        # Polls come every 0.2 s at first: say it when it changes, or every PROGRESS_SECONDS.
        if line != said or time.monotonic() - said_at >= PROGRESS_SECONDS:
            ctx.progress(line)
            said, said_at = line, time.monotonic()
        if time.monotonic() >= deadline or ctx.cancel.wait(interval):
            break
    raise TransientFailure(
        f"Flux configuration(s) not yet Compliant: {_names(pending)}",
        "check `kubectl -n flux-system get gitrepositories,kustomizations`",
    )


def _names(states: dict[str, str], most: int = 10) -> str:
    shown = ", ".join(f"{n} ({s})" for n, s in list(states.items())[:most])
    return shown + (f" and {len(states) - most} more" if len(states) > most else "")


def run(ctx: Context) -> None:
    """Install the extension, create the configurations (once), wait for pods and compliance."""
    config = ctx.require_config()
    if not config.flux.configurations:
        LOG.info("flux: no configurations in the metadata; nothing to do")
        return
    kube.prewarm()
    session = arm.session(ctx)
    LOG.info("flux: %s", ensure_extension(ctx, session, config))
    kube.wait_pods(ctx, NAMESPACE, PODS_TIMEOUT * ctx.time_scale, "Flux controllers")
    extension_succeeded(ctx, session, config)
    created = ensure_configurations(ctx, session, config)
    LOG.info(
        "flux: %d configuration(s) created, %d present",
        len(created),
        len(config.flux.configurations) - len(created),
    )
    wait_compliant(ctx, session, config)


def check(ctx: Context) -> CheckResult:
    """Read-only: the extension and the compliance of every configuration (one list)."""
    config = ctx.require_config()
    if config.arc is None or not config.flux.configurations:
        return CheckResult(True, "no Flux configurations")
    try:
        ext = extension_state(ctx, config.arc)
        if ext is None or str(ext.get("provisioningState")).lower() != "succeeded":
            state = "missing" if ext is None else ext.get("provisioningState")
            return CheckResult(False, f"Flux extension {state}", "run `firstboot run`")
        docs = arm.session(ctx).configurations()
    except arm.NoCredentials as exc:
        return arm.inconclusive(exc, "the Flux extension and configurations")
    except (PermanentFailure, TransientFailure) as exc:
        return CheckResult(False, exc.message, exc.remedy)
    missing = [c.name for c in config.flux.configurations if c.name not in docs]
    if missing:
        return CheckResult(
            False, f"Flux configuration(s) missing: {', '.join(missing)}", "run `firstboot run`"
        )
    bad = {
        c.name: docs[c.name]
        for c in config.flux.configurations
        if _props(docs[c.name]).get("complianceState") != "Compliant"
    }
    if bad:
        detail = "; ".join(
            f"{n}: {_props(d).get('complianceState')} ({_compliance_problem(d)})" for n, d in bad.items()
        )
        return CheckResult(
            False, f"Flux not compliant: {detail}", "check `kubectl -n flux-system get kustomizations`"
        )
    return CheckResult(True, f"Flux extension installed, {len(docs)} configuration(s) Compliant")
