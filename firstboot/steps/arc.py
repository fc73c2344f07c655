"""arc: connect the K3s cluster to Azure Arc, once, and wait for the Arc agents.

1. The connected cluster is read through Resource Manager with the Azure SDK (`firstboot.arm`): one that is
   already connected is not connected twice (a re-run after a crash or reboot); one still being created by
   an earlier, interrupted run is waited for (transient). "Already connected" means this cluster's own Arc
   agents record that resource (`firstboot.arcowner`); a resource of that name without them belongs to
   another cluster (a stale one of a deleted clone) and fails at once with a remedy, as `az connectedk8s
   connect` would refuse it.
2. Only when it is absent: `az login --service-principal` (secret as `@FILE`, or `--certificate FILE`; in a
   full run done beside K3s's start, see `begin`) and `az connectedk8s connect`, the one job only az does
   (it installs the agents with helm), with `HELM_CLIENT_PATH` / `KUBECTL_CLIENT_PATH` naming the image's
   helm and K3s's kubectl, so nothing but the agents is downloaded; both must exist:
   `az connectedk8s connect --kube-config /etc/rancher/k3s/k3s.yaml --distribution k3s --infrastructure
   vsphere --onboarding-timeout N --tags k=v ...` plus `--proxy-https/--proxy-http/--proxy-skip-range/
   --proxy-cert` when a proxy is configured. Then, success or failure, `az logout` and az's credential
   files removed (`azcli.sign_out`): no service principal secret stays on disk after onboarding.
3. Watch the `azure-arc` pods until all are Ready; the ones that are not are reported with the reason from
   their container statuses and events (certificate and DNS failures named as such).

Rejected credentials, an unknown resource group or missing permissions fail at once (see
`firstboot.azcli` and `firstboot.arm`); timeouts, throttling and 5xx are retried by the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from firstboot import arcowner, arm, azcli, kube, proxyenv
from firstboot.contract import ArcConfig, OnboardingConfig
from firstboot.kube import client
from firstboot.step import (
    CheckResult,
    Context,
    PermanentFailure,
    RetryPolicy,
    StepMeta,
    TransientFailure,
    failure_text,
)

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="arc",
    needs=("k3s",),
    timeout_seconds=2700,
    retry=RetryPolicy(deadline_seconds=2400, initial_wait=10, max_wait=120, max_attempts=6),
    servers_only=True,
    summary="connecting the cluster to Azure Arc",
    # The sign-in needs the credentials, the proxy and a network that was checked, not K3s: it runs beside
    # K3s's start (`begin`), so az's seconds of start-up and Entra ID's round trip leave the critical path.
    begins_after=("metadata", "hostname", "dns", "time", "proxy", "connectivity"),
)

NAMESPACE = "azure-arc"
# az's own work beyond --onboarding-timeout (helm, ARM calls): the bound of the connect subprocess.
CONNECT_MARGIN_SECONDS = 300.0


def connect_args(ctx: Context, config: OnboardingConfig) -> list[str]:
    """The argv (after `az`) of `connectedk8s connect` for this config; no secret in it."""
    arc = azcli.require_arc(config)
    args = [
        "connectedk8s",
        "connect",
        *_cluster_ident(arc),
        "--location",
        arc.location,
        "--kube-config",
        str(ctx.path(kube.KUBECONFIG)),
        "--distribution",
        "k3s",
        "--infrastructure",
        "vsphere",
        "--onboarding-timeout",
        str(arc.onboarding_timeout_seconds),
    ]
    if arc.tags:
        args += ["--tags", *(f"{k}={v}" for k, v in sorted(arc.tags.items()))]
    proxy = config.proxy
    if proxy.https_proxy:
        args += ["--proxy-https", proxy.https_proxy]
    if proxy.http_proxy:
        args += ["--proxy-http", proxy.http_proxy]
    if proxy.https_proxy or proxy.http_proxy:
        args += ["--proxy-skip-range", proxyenv.proxy_skip_range(proxy, config.k3s)]
        ca = proxyenv.ca_path(proxy)
        if ca is not None:
            args += ["--proxy-cert", str(ctx.path(ca))]
    return args


def _cluster_ident(arc: ArcConfig) -> list[str]:
    """The az arguments naming the connected cluster."""
    return [
        "--name",
        arc.cluster_name,
        "--resource-group",
        arc.resource_group,
        "--subscription",
        arc.subscription_id,
    ]


def show_cluster(ctx: Context) -> dict[str, Any] | None:
    """The connected cluster resource through Resource Manager (REST shape), None when it does not exist."""
    return arm.session(ctx).cluster()


def _local_clients(ctx: Context) -> None:
    """The image's helm and K3s's kubectl must be there: connectedk8s would download them otherwise."""
    for name, guest in (("helm", azcli.HELM_PATH), ("kubectl", azcli.KUBECTL_PATH)):
        if not ctx.path(guest).exists():
            raise PermanentFailure(
                f"{guest} is missing: az connectedk8s connect would download {name} from the internet",
                "the image must carry helm (azure.helm in the image spec) and K3s's kubectl link: rebuild "
                "the template with `builder build`",
            )


def ensure_connected(ctx: Context, config: OnboardingConfig) -> str:
    """Connect unless already connected; returns what was done (for the log)."""
    arc = azcli.require_arc(config)
    cluster = arm.wait_settled(
        ctx,
        lambda: show_cluster(ctx),
        f"connected cluster {arc.cluster_name}",
        (arc.onboarding_timeout_seconds + CONNECT_MARGIN_SECONDS) * ctx.time_scale,
    )
    if cluster is not None:
        props = cluster.get("properties") or {}
        succeeded = arm.provisioning_state(cluster) == "succeeded"
        # Connected, but by whom? Only this cluster's own Arc agents make it "already connected".
        stale = arcowner.conflict(ctx, arc) if succeeded else None
        if succeeded and stale is None:
            return f"already connected ({props.get('connectivityStatus', 'unknown')})"
        if stale is None:
            stale = f"connected cluster {arc.cluster_name} exists in state {props.get('provisioningState')}"
        if arc.on_conflict != "replace":
            raise PermanentFailure(stale, arcowner.remedy(arc))
        # arc.on_conflict: replace. Deleted through Resource Manager (the resource's agents, if any, ran on
        # the cluster it belonged to, not on this one), then this cluster is connected under that name.
        LOG.warning("arc: %s; arc.on_conflict is replace: deleting it", stale)
        ctx.progress(f"deleting the stale connected cluster {arc.cluster_name} (arc.on_conflict: replace)")
        arm.session(ctx).delete_cluster(
            ctx, (arc.onboarding_timeout_seconds + CONNECT_MARGIN_SECONDS) * ctx.time_scale
        )
    _local_clients(ctx)
    # az keeps its own sign-in: the one az process besides connect, and only when connecting.
    azcli.login(ctx, arc)
    ctx.progress(f"az connectedk8s connect {arc.cluster_name} (up to {arc.onboarding_timeout_seconds} s)")
    timeout = (arc.onboarding_timeout_seconds + CONNECT_MARGIN_SECONDS) * ctx.time_scale
    result = azcli.run(
        ctx,
        connect_args(ctx, config),
        timeout=timeout,
        description="az connectedk8s connect",
        detach_as="connectedk8s-connect",
    )
    if result.exit_code != 0 and "already onboarded" in result.stderr:
        return "already connected (connect raced an earlier run)"
    azcli.check_ok(result, "az connectedk8s connect")
    return "connected"


# The early sign-in `begin` started (one per process: the engine begins a step once per run).
_prepared: threading.Thread | None = None


def begin(ctx: Context) -> None:
    """Sign az in beside K3s's start when the connected cluster does not exist yet (the engine calls this
    after the connectivity check; K3s takes seconds to be Ready, az's start-up and sign-in take seconds too).

    In a thread: the step's run waits for it; `abandon` signs out when the run ends before the step runs.
    A cluster that exists needs no az (`run` decides what it is); any failure is logged and left to `run`,
    which meets it again in its turn and reports it with its remedy.
    """
    global _prepared
    config = ctx.require_config()
    if config.arc is None or not arm.PREWARM_SIGN_IN:
        return
    arm.prewarm(ctx)
    _prepared = threading.Thread(target=_sign_in_early, args=(ctx, config.arc), name="arc-sign-in")
    _prepared.start()


def _sign_in_early(ctx: Context, arc: ArcConfig) -> None:
    arm.wait_prewarmed()
    try:
        if show_cluster(ctx) is None:
            _local_clients(ctx)
            azcli.login(ctx, arc)
    except Exception as exc:  # noqa: BLE001 - the step's run meets it again and reports it
        LOG.debug("arc: early sign-in did not work (the arc step will say why): %s",
                  failure_text(exc, ctx.secret_values()))  # fmt: skip


def _wait_prepared() -> None:
    global _prepared
    if _prepared is not None:
        _prepared.join()
        _prepared = None


def abandon(ctx: Context) -> None:
    """The run ended before this step ran: the early sign-in's stored credentials go."""
    _wait_prepared()
    config = ctx.require_config()
    if config.arc is not None:
        azcli.sign_out(ctx, config.arc)


def run(ctx: Context) -> None:
    """Sign in, connect once, wait for the Arc agents."""
    config = ctx.require_config()
    arc = azcli.require_arc(config)
    _wait_prepared()  # signed in already when the cluster needs connecting (begin), or failed: retried below
    kube.prewarm()
    kubeconfig = ctx.path(kube.KUBECONFIG)
    if not kubeconfig.exists():
        raise TransientFailure(
            f"{kubeconfig} is missing", "the k3s step must succeed first: `firstboot doctor`"
        )
    try:
        done = ensure_connected(ctx, config)
    except BaseException:
        # Failure: az's stored sign-in (the service principal's secret in its config dir) goes now; a retry
        # signs in again.
        azcli.sign_out(ctx, arc)
        raise
    LOG.info("arc: %s %s/%s", done, arc.resource_group, arc.cluster_name)
    # Success (or a re-run after a crash mid-connect): the same sign-out, while the agents start, so its az
    # process is off the critical path; it ends before the step does.
    with ThreadPoolExecutor(1, thread_name_prefix="az-sign-out") as pool:
        signed_out = pool.submit(azcli.sign_out, ctx, arc)
        started = time.monotonic()
        try:
            kube.wait_pods(ctx, NAMESPACE, arc.onboarding_timeout_seconds * ctx.time_scale, "Arc agents")
        finally:
            signed_out.result()
    LOG.info("arc: agents Ready after %.1f s", time.monotonic() - started)


def check(ctx: Context) -> CheckResult:
    """Read-only: Arc resource connected (read through Resource Manager) and the azure-arc pods Ready."""
    config = ctx.require_config()
    if config.arc is None:
        return CheckResult(True, "no Arc onboarding (agent node)")
    try:
        cluster = show_cluster(ctx)
    except arm.NoCredentials as exc:
        return arm.inconclusive(exc, f"connected cluster {config.arc.cluster_name}")
    except (PermanentFailure, TransientFailure) as exc:
        return CheckResult(False, exc.message, exc.remedy)
    if cluster is None:
        return CheckResult(
            False, f"cluster {config.arc.cluster_name} is not connected to Arc", "run `firstboot run`"
        )
    status = (cluster.get("properties") or {}).get("connectivityStatus")
    try:
        with kube.client_from(ctx.path(kube.KUBECONFIG)) as api:
            core = client.CoreV1Api(api)
            pods = core.list_namespaced_pod(NAMESPACE, _request_timeout=10).items
            problems = kube.diagnose_pods(core, NAMESPACE, pods)
    except kube.api_errors() as exc:
        return CheckResult(
            False, f"cannot list the {NAMESPACE} pods: {exc}", "check k3s (`firstboot doctor`)"
        )
    if problems:
        lines = "; ".join(p.line() for p in problems)
        return CheckResult(False, f"Arc {status}; pods not Ready: {lines}", kube.remedy_for(problems))
    if status != "Connected":
        return CheckResult(
            False,
            f"Arc connectivityStatus is {status}",
            "the agents cannot reach Azure: check the proxy, DNS and "
            "`kubectl -n azure-arc logs deploy/clusterconnect-agent`",
        )
    return CheckResult(True, f"Arc cluster {config.arc.cluster_name} Connected, {len(pods)} agent pods Ready")
