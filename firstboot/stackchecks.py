"""doctor's full stack: the reads an engineer runs by hand after the steps' own checks, each with a remedy.

- `timedatectl`: the kernel clock synchronised (`NTPSynchronized=yes`; systemd's `timedatectl show` prints
  `Property=value` lines);
- `chronyd`: the unit active (`systemctl is-active`);
- `firewall`: `firewall-cmd --list-all` of the trusted zone (holds the K3s pod and service ranges, as the
  image's trusted.xml) and the public zone (6443/tcp on a server); firewalld's command.py prints
  `  sources: ...` / `  ports: 6443/tcp ...` and exits 252 (errors.NOT_RUNNING) when it is not running;
- `coredns`: the `coredns` ConfigMap of kube-system has a Corefile that forwards (to the resolv.conf K3s
  gives it), and no `coredns-custom` key carries a `forward` (ARCHITECTURE.md: it is ignored or breaks
  CoreDNS; the upstream belongs in /etc/rancher/k3s/resolv.conf);
- `arc-agents`: the azure-arc pods, and for each one not Ready or restarted, the error lines of its
  recent log;
- `flux-extension`: the microsoft.flux extension's provisioning state, read the way the flux step reads
  it (`steps.flux.extension_state`).

Every check is read-only and bounded; a tool that is missing or a cluster that is not up yet makes the
line inconclusive rather than a problem.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firstboot import kube, subp
from firstboot.step import CheckResult, Context

LOG = logging.getLogger(__name__)

TOOL_TIMEOUT = 15.0
KUBE_TIMEOUT = 10
ARC_NAMESPACE = "azure-arc"
LOG_TAIL_LINES = 200
# A line of an agent log that is worth showing: level markers and failure words, case-insensitive.
ERROR_LINE = re.compile(r"\b(error|fatal|panic|fail(ed|ure)?|x509|denied|refused|timeout)\b", re.I)
FIREWALL_NOT_RUNNING = 252
_FORWARD = re.compile(r"^\s*forward\s", re.M)


@dataclass(frozen=True)
class StackCheck:
    """One line of doctor after the steps: a name and a read-only check."""

    name: str
    check: Callable[[Context], CheckResult]
    needs_config: bool = True


class _Inconclusive(Exception):
    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.result = CheckResult(False, message, remedy, conclusive=False)


def _tool(ctx: Context, argv: list[str]) -> subp.Result:
    try:
        return subp.run(
            argv,
            timeout=TOOL_TIMEOUT,
            env=ctx.env or None,
            secrets=ctx.secret_values(),
            check=False,
            description=argv[0],
        )
    except subp.ProcessExecutionError as exc:
        raise _Inconclusive(f"{argv[0]} did not run: {exc}", f"is {argv[0]} installed?") from None


def _guard(func: Callable[[Context], CheckResult]) -> Callable[[Context], CheckResult]:
    def wrapped(ctx: Context) -> CheckResult:
        try:
            return func(ctx)
        except _Inconclusive as exc:
            return exc.result

    wrapped.__doc__ = func.__doc__
    return wrapped


def properties(text: str) -> dict[str, str]:
    """`Key=value` lines (`timedatectl show`, `systemctl show`) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


@_guard
def check_timedatectl(ctx: Context) -> CheckResult:
    """System clock synchronised according to timedatectl."""
    result = _tool(ctx, ["timedatectl", "show"])
    if result.exit_code != 0:
        raise _Inconclusive(f"timedatectl show failed: {result.stderr.strip()[:200]}", "is systemd running?")
    props = properties(result.stdout)
    if props.get("NTPSynchronized") == "yes":
        return CheckResult(True, f"system clock synchronised (time zone {props.get('Timezone', '?')})")
    if props.get("NTP") != "yes":
        return CheckResult(
            False,
            "system clock not synchronised and NTP is off",
            "turn it on: `timedatectl set-ntp true` (starts chronyd), then `chronyc tracking`",
        )
    return CheckResult(
        False,
        "system clock not synchronised yet",
        "check `chronyc sources -v`: are time.ntp_servers reachable on UDP 123 from this network?",
    )


@_guard
def check_chronyd(ctx: Context) -> CheckResult:
    """The chronyd unit is active."""
    result = _tool(ctx, ["systemctl", "is-active", "chronyd"])
    state = result.stdout.strip() or "unknown"
    if result.exit_code == 0 and state == "active":
        return CheckResult(True, "chronyd is active")
    return CheckResult(
        False,
        f"chronyd is {state}",
        "`systemctl enable --now chronyd`; if it fails, `journalctl -u chronyd` and `chronyd -p` show why",
    )


def zone_info(text: str) -> dict[str, list[str]]:
    """`firewall-cmd --list-all` output as key -> words (`sources`, `ports`, `services`, ...)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("  ") and ":" in line:
            key, _, value = line.strip().partition(":")
            out[key] = value.split()
    return out


@_guard
def check_firewall(ctx: Context) -> CheckResult:
    """The trusted zone holds the K3s ranges; a server's public zone opens the API port."""
    config = ctx.require_config()
    trusted = _tool(ctx, ["firewall-cmd", "--list-all", "--zone=trusted"])
    if trusted.exit_code == FIREWALL_NOT_RUNNING:
        return CheckResult(
            False, "firewalld is not running", "`systemctl enable --now firewalld` (the image's rules load)"
        )
    if trusted.exit_code != 0:
        raise _Inconclusive(f"firewall-cmd failed: {trusted.stderr.strip()[:200]}", "run it by hand")
    ranges = [str(config.k3s.cluster_cidr), str(config.k3s.service_cidr)]
    sources = zone_info(trusted.stdout).get("sources", [])
    missing = [r for r in ranges if r not in sources]
    if missing:
        return CheckResult(
            False,
            f"the trusted zone lacks the K3s range(s) {', '.join(missing)}: pod traffic is dropped",
            " && ".join(f"firewall-cmd --permanent --zone=trusted --add-source={r}" for r in missing)
            + " && firewall-cmd --reload",
        )
    if config.k3s.role.value == "server":
        public = _tool(ctx, ["firewall-cmd", "--list-all", "--zone=public"])
        ports = zone_info(public.stdout).get("ports", [])
        if public.exit_code == 0 and "6443/tcp" not in ports:
            return CheckResult(
                False,
                "the public zone does not open 6443/tcp (the K3s API): agents and Arc cannot reach it",
                "firewall-cmd --permanent --zone=public --add-port=6443/tcp && firewall-cmd --reload",
            )
    return CheckResult(True, f"firewalld trusts {', '.join(ranges)}")


def _core(ctx: Context) -> tuple[Any, Any]:
    try:
        api = kube.client_from(ctx.path(kube.KUBECONFIG))
    except kube.KubeUnavailable as exc:
        raise _Inconclusive(f"K3s is not up: {exc}", "check the k3s line first") from None
    return api, kube.client.CoreV1Api(api)


@_guard
def check_coredns(ctx: Context) -> CheckResult:
    """CoreDNS forwards through its Corefile; coredns-custom does not override the upstream."""
    api, core = _core(ctx)
    with api:
        try:
            main = core.read_namespaced_config_map("coredns", "kube-system", _request_timeout=KUBE_TIMEOUT)
        except kube.api_errors() as exc:
            if getattr(exc, "status", None) == 404:
                return CheckResult(
                    False,
                    "no coredns ConfigMap in kube-system: K3s has not deployed CoreDNS",
                    "check `kubectl -n kube-system get deploy coredns` and the k3s journal",
                )
            raise _Inconclusive(f"reading the coredns ConfigMap: {exc}", "check the k3s line") from None
        try:
            custom = core.read_namespaced_config_map(
                "coredns-custom", "kube-system", _request_timeout=KUBE_TIMEOUT
            )
        except kube.api_errors() as exc:
            if getattr(exc, "status", None) != 404:
                raise _Inconclusive(f"reading coredns-custom: {exc}", "check the k3s line") from None
            custom = None
    corefile = (main.data or {}).get("Corefile", "")
    if not _FORWARD.search(corefile):
        return CheckResult(
            False,
            "the coredns Corefile has no forward: pods cannot resolve outside the cluster",
            "let K3s rewrite it: delete the ConfigMap (`kubectl -n kube-system delete cm coredns`) and "
            "restart k3s",
        )
    bad = sorted(k for k, v in ((custom.data or {}) if custom else {}).items() if _FORWARD.search(v or ""))
    if bad:
        return CheckResult(
            False,
            f"coredns-custom sets forward in {', '.join(bad)}: CoreDNS ignores it or fails to load",
            "remove those keys (`kubectl -n kube-system edit cm coredns-custom`); set the pod DNS upstream "
            "with dns.pod_upstream_servers (/etc/rancher/k3s/resolv.conf)",
        )
    return CheckResult(True, "CoreDNS forwards to the upstream K3s gives it; coredns-custom leaves it alone")


def _error_lines(core: Any, pod: Any, limit: int = 3) -> list[str]:
    """The last error-looking lines of each container's recent log."""
    lines: list[str] = []
    for container in pod.spec.containers or []:
        try:
            text = kube.recent_log(core, ARC_NAMESPACE, pod.metadata.name, container.name, LOG_TAIL_LINES)
        except kube.api_errors() as exc:
            LOG.debug("log of %s/%s: %s", pod.metadata.name, container.name, exc)
            continue
        errors = [ln.strip()[:200] for ln in text.splitlines() if ERROR_LINE.search(ln)]
        lines += [f"{container.name}: {ln}" for ln in errors]
    return lines[-limit:]


def _restarted(pod: Any) -> bool:
    return any((cs.restart_count or 0) > 0 for cs in (pod.status.container_statuses or []) if pod.status)


@_guard
def check_arc_agents(ctx: Context) -> CheckResult:
    """The Arc agents run, and the recent logs of those that do not (or restarted) show no errors."""
    config = ctx.require_config()
    if config.arc is None or not config.onboards_cluster:
        return CheckResult(True, "no Arc agents on this node")
    api, core = _core(ctx)
    with api:
        try:
            pods = core.list_namespaced_pod(ARC_NAMESPACE, _request_timeout=KUBE_TIMEOUT).items
        except kube.api_errors() as exc:
            raise _Inconclusive(f"listing {ARC_NAMESPACE} pods: {exc}", "check the k3s line") from None
        if not pods:
            return CheckResult(
                False, f"no pods in {ARC_NAMESPACE}: the Arc agents are not installed", "see the arc line"
            )
        problems = kube.diagnose_pods(core, ARC_NAMESPACE, pods)
        suspects = [p for p in pods if not kube.pod_ready(p) or _restarted(p)]
        logs = {p.metadata.name: _error_lines(core, p) for p in suspects}
    if not problems and not any(logs.values()):
        return CheckResult(True, f"{len(pods)} Arc agent pod(s) Ready, no errors in their recent logs")
    parts = [p.line() for p in problems]
    parts += [f"{ARC_NAMESPACE}/{name} log: {' / '.join(lines)}" for name, lines in logs.items() if lines]
    # The logs often say what the pod status does not (an x509 or DNS error behind a CrashLoopBackOff).
    from_logs = kube.classify(" | ".join(line for lines in logs.values() for line in lines))
    if from_logs in ("certificate", "dns"):
        remedy = kube.REMEDIES[from_logs]
    elif problems:
        remedy = kube.remedy_for(problems)
    else:
        remedy = f"read them: `kubectl -n {ARC_NAMESPACE} logs POD --all-containers --tail={LOG_TAIL_LINES}`"
    return CheckResult(False, "Arc agents: " + "; ".join(parts)[:1000], remedy)


@_guard
def check_flux_extension(ctx: Context) -> CheckResult:
    """The microsoft.flux extension is provisioned."""
    from firstboot.step import StepFailure
    from firstboot.steps import flux

    config = ctx.require_config()
    if config.arc is None or not config.onboards_cluster or not config.flux.configurations:
        return CheckResult(True, "no Flux on this node")
    from firstboot import arm

    try:
        ext = flux.extension_state(ctx, config.arc)
    except arm.NoCredentials as exc:
        return arm.inconclusive(exc, "the Flux extension")
    except StepFailure as exc:
        return CheckResult(False, f"Flux extension unreadable: {exc.message}", exc.remedy)
    if ext is None:
        return CheckResult(False, "the Flux extension is not installed", "run `firstboot run` (flux step)")
    state = str(ext.get("provisioningState", "unknown"))
    if state.lower() != "succeeded":
        error = ext.get("errorMessage") or (ext.get("statuses") or [{}])[0].get("message", "")
        detail = f": {str(error)[:300]}" if error else ""
        return CheckResult(
            False,
            f"the Flux extension is {state}{detail}",
            "delete it (`az k8s-extension delete --name flux ...`), then `firstboot run`"
            if state.lower() == "failed"
            else "wait, then `firstboot doctor` again",
        )
    return CheckResult(True, f"the Flux extension is {state} (version {ext.get('version', '?')})")


CHECKS = (
    StackCheck("timedatectl", check_timedatectl, needs_config=False),
    StackCheck("chronyd", check_chronyd, needs_config=False),
    StackCheck("firewall", check_firewall),
    StackCheck("coredns", check_coredns),
    StackCheck("arc-agents", check_arc_agents),
    StackCheck("flux-extension", check_flux_extension),
)
