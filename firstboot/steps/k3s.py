"""k3s: start the baked K3s as server or agent, then wait for the node Ready, CoreDNS and cluster DNS.

- Configuration goes into a drop-in, `/etc/rancher/k3s/config.yaml.d/50-arcbake.yaml` (K3s merges
  `config.yaml.d/*.yaml` after `config.yaml`, so the baked `selinux:` and `resolv-conf:` stay). The baked
  `config.yaml` holds only keys both roles define, because `k3s agent` refuses any other ("flag provided
  but not defined"; K3s drops unknown keys for `server` only). Every node: node name and labels, and
  `token-file:` when the fleet gave the cluster's join token (written 0600 to `/var/lib/arcbake/k3s-token`,
  never to argv, the environment of a child, or a log). Servers only: the baked server keys of
  `/etc/arcbake/k3s-server.yaml` (e.g. `disable:`), the cluster CIDRs and DNS IP and
  `write-kubeconfig-mode: "0600"` (Arc onboarding refuses a group-readable kubeconfig); the first server
  of an HA cluster `cluster-init: true` (embedded etcd). Agents and joining servers: `server:`.
- `systemctl enable --now --no-block k3s` (server) or `k3s-agent` (agent; the unit is written when the
  image has none). `--no-block`: the bounded watch below is what waits, not systemd's job timeout.
- Server: wait for `/etc/rancher/k3s/k3s.yaml` (fixed to 0600 when K3s wrote it wider), then, with the
  `kubernetes` client and watches, for this node Ready and the `coredns` deployment available, all within
  `k3s.ready_timeout_seconds`; then `kubernetes.default.svc.cluster.local` and an Azure name must resolve
  through the cluster DNS service IP (dnspython). Agents wait for their node through the kubelet's
  kubeconfig and stop there.

Test seam: `ARCBAKE_CLUSTER_DNS=HOST[:PORT]` in the environment replaces the cluster DNS address (tests
point it at a loopback DNS server; the guest uses `k3s.cluster_dns`, port 53). Every command goes through
`systemctl` on PATH: tests put a double there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.resolver
import yaml

from firstboot import arm, kube, subp
from firstboot.contract import OnboardingConfig, Role
from firstboot.fsutil import atomic_write, private_dir
from firstboot.kube import client
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="k3s",
    needs=("resources",),
    timeout_seconds=1200,
    retry=RetryPolicy(deadline_seconds=900, initial_wait=5, max_wait=30, max_attempts=4),
    summary="starting k3s and waiting for the node, CoreDNS and cluster DNS",
    # K3s's start needs its host name, DNS upstream (CoreDNS copies it), a clock its certificates can trust
    # and the proxy environment; not the connectivity and resources checks, which run beside its start.
    begins_after=("metadata", "hostname", "dns", "time", "proxy"),
)

CONFIG_DROPIN = "/etc/rancher/k3s/config.yaml.d/50-arcbake.yaml"
# Server-only keys baked from the image spec; K3s never reads this file, firstboot copies it into servers.
SERVER_KEYS = "/etc/arcbake/k3s-server.yaml"
TOKEN_FILE = "/var/lib/arcbake/k3s-token"  # noqa: S105 - a path, not a token
AGENT_KUBECONFIG = "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"
AGENT_UNIT_FILE = "/etc/systemd/system/k3s-agent.service"
CLUSTER_NAME = "kubernetes.default.svc.cluster.local"
AZURE_NAME = "management.azure.com"
CLUSTER_DNS_ENV = "ARCBAKE_CLUSTER_DNS"
DNS_TIMEOUT = 3.0
# A stat() of a local file: polled often, K3s writing k3s.yaml is on the critical path of every boot.
FILE_POLL_SECONDS = 0.02
SYSTEMCTL_TIMEOUT = 120.0

AGENT_UNIT = """\
# written by arcbake firstboot (k3s step): the image had no agent unit
[Unit]
Description=Lightweight Kubernetes (agent)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s agent

[Install]
WantedBy=multi-user.target
"""

REMEDY_UNIT = "check the unit: `systemctl status {unit}` and `journalctl -u {unit} -b`"


def unit_name(config: OnboardingConfig) -> str:
    """`k3s` for a server, `k3s-agent` for an agent."""
    return "k3s" if config.k3s.role is Role.SERVER else "k3s-agent"


def dropin(
    config: OnboardingConfig, *, token_file: bool, server_keys: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The K3s config drop-in for this node (no secret: the join token is referenced by file)."""
    k3s = config.k3s
    doc: dict[str, object] = {"node-name": config.hostname}
    if k3s.node_labels:
        doc["node-label"] = [f"{k}={v}" for k, v in sorted(k3s.node_labels.items())]
    if token_file:
        doc["token-file"] = TOKEN_FILE
    if k3s.role is Role.SERVER:
        doc.update(server_keys or {})
        doc.update(
            {
                "write-kubeconfig-mode": "0600",
                "cluster-cidr": str(k3s.cluster_cidr),
                "service-cidr": str(k3s.service_cidr),
                "cluster-dns": str(k3s.cluster_dns),
            }
        )
    if k3s.cluster_init:
        doc["cluster-init"] = True
    if k3s.server_url:
        doc["server"] = str(k3s.server_url).rstrip("/")
    return doc


def baked_server_keys(ctx: Context) -> dict[str, object]:
    """The image's server-only K3s keys (none when the image has no such file)."""
    path = ctx.path(SERVER_KEYS)
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PermanentFailure(f"cannot read {SERVER_KEYS}: {exc}", "rebuild the template") from None
    if not isinstance(doc, dict):
        raise PermanentFailure(f"{SERVER_KEYS} is not a mapping", "rebuild the template")
    return {str(k): v for k, v in doc.items()}


def _write_config(ctx: Context, config: OnboardingConfig) -> bool:
    """Write the token, the drop-in and the agent unit; True when a unit file was added (daemon-reload)."""
    token = ctx.secrets.k3s_token if ctx.secrets else None
    if token is None and config.k3s.server_url:
        raise PermanentFailure(
            f"joining {config.k3s.server_url} needs the cluster's join token "
            "(guestinfo.arcbake.secrets k3s_token)",
            "add k3s_token to the fleet's secrets and run `builder deploy` again",
        )
    if token is not None:
        token_path = ctx.path(TOKEN_FILE)
        private_dir(token_path.parent)
        atomic_write(token_path, token.get_secret_value() + "\n", mode=0o600)
    server_keys = baked_server_keys(ctx) if config.k3s.role is Role.SERVER else None
    doc = dropin(config, token_file=token is not None, server_keys=server_keys)
    text = "# written by arcbake firstboot (k3s step)\n" + yaml.safe_dump(doc, sort_keys=True)
    atomic_write(ctx.path(CONFIG_DROPIN), text, mode=0o600)
    if config.k3s.role is Role.SERVER:
        return False
    unit = ctx.path(AGENT_UNIT_FILE)
    if unit.exists():
        return False
    atomic_write(unit, AGENT_UNIT, mode=0o644)
    return True


def _systemctl(ctx: Context, *args: str, check: bool = True) -> subp.Result:
    return subp.run(
        ["systemctl", *args],
        timeout=SYSTEMCTL_TIMEOUT,
        env=dict(ctx.env) or None,
        secrets=ctx.secret_values(),
        description=f"systemctl {' '.join(args)}",
        check=check,
    )


def _start(ctx: Context, unit: str, reload: bool) -> None:
    try:
        if reload:
            _systemctl(ctx, "daemon-reload")
        _systemctl(ctx, "enable", "--now", "--no-block", f"{unit}.service")
    except subp.ProcessExecutionError as exc:
        text = f"{exc.stderr} {exc.reason}"
        if exc.not_found:
            raise PermanentFailure(f"systemctl is missing: {exc}", "firstboot needs systemd") from None
        if "not found" in text or "does not exist" in text:
            raise PermanentFailure(
                f"{unit}.service is not installed: {exc}",
                "the image has no K3s: rebuild the template with `builder build` "
                "(k3s is baked, never started)",
            ) from None
        raise TransientFailure(f"cannot start {unit}: {exc}", REMEDY_UNIT.format(unit=unit)) from None


def _wait_file(ctx: Context, path: Path, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if ctx.cancel.wait(FILE_POLL_SECONDS):
            return False
    return path.exists()


def kubeconfig_mode_problem(path: Path) -> str | None:
    """A message when the kubeconfig is readable by group or others (Arc onboarding refuses it)."""
    mode = path.stat().st_mode & 0o777
    return f"{path} has mode {mode:04o} (group/other can read it)" if mode & 0o077 else None


def fix_kubeconfig_mode(path: Path) -> None:
    """Make the kubeconfig 0600, saying so when it was wider."""
    problem = kubeconfig_mode_problem(path)
    if problem:
        LOG.warning("%s; setting 0600 (write-kubeconfig-mode is 0600 in %s)", problem, CONFIG_DROPIN)
        path.chmod(0o600)


def cluster_dns_address(ctx: Context, config: OnboardingConfig) -> tuple[str, int]:
    """The cluster DNS service address, or the `ARCBAKE_CLUSTER_DNS` override (tests)."""
    override = ctx.env.get(CLUSTER_DNS_ENV, "")
    if override:
        host, _, port = override.rpartition(":") if override.count(":") == 1 else (override, "", "53")
        return host, int(port or 53)
    return str(config.k3s.cluster_dns), 53


def resolve_cluster_names(ctx: Context, config: OnboardingConfig) -> list[str]:
    """Failures resolving the cluster's own name and (without a proxy) an Azure name through the cluster
    DNS IP. Behind a proxy the Arc agents reach Azure through it (`--proxy-https`), and a site whose pods
    cannot resolve public names is a working one."""
    host, port = cluster_dns_address(ctx, config)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    resolver.lifetime = DNS_TIMEOUT
    failures = []
    for name in (CLUSTER_NAME, *(() if config.proxy.enabled else (AZURE_NAME,))):
        try:
            resolver.resolve(name, "A")
        except dns.exception.DNSException as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    return failures


def _ready_budget(ctx: Context, config: OnboardingConfig) -> float:
    return config.k3s.ready_timeout_seconds * ctx.time_scale


def _node_message(node: object | None) -> str:
    if node is None:
        return "the node has not registered"
    for cond in getattr(getattr(node, "status", None), "conditions", None) or []:
        if cond.type == "Ready":
            return f"Ready={cond.status} ({cond.reason}: {cond.message})"
    return "no Ready condition yet"


def wait_node(ctx: Context, api: client.ApiClient, name: str, deadline: float) -> None:
    """Watch this node until Ready or the deadline (TransientFailure naming the condition)."""
    core = client.CoreV1Api(api)
    ctx.progress(f"waiting for node {name} to be Ready")
    result = kube.wait_until(
        core.list_node,
        lambda objs: name in objs and kube.node_ready(objs[name]),
        timeout=max(0.0, deadline - time.monotonic()),
        cancel=ctx.cancel,
        field_selector=f"metadata.name={name}",
    )
    if not result.ok:
        detail = result.error or _node_message(result.objects.get(name))
        raise TransientFailure(
            f"node {name} is not Ready: {detail}",
            "check `journalctl -u k3s -b` (container runtime, CNI) and `kubectl describe node " + name + "`",
        )


def wait_coredns(ctx: Context, api: client.ApiClient, deadline: float) -> None:
    """Watch the coredns deployment until available; name the reasons of its pods when it is not."""
    apps = client.AppsV1Api(api)
    ctx.progress("waiting for CoreDNS to be available")
    result = kube.wait_until(
        apps.list_namespaced_deployment,
        lambda objs: "kube-system/coredns" in objs and kube.deployment_available(objs["kube-system/coredns"]),
        timeout=max(0.0, deadline - time.monotonic()),
        cancel=ctx.cancel,
        args=("kube-system",),
        field_selector="metadata.name=coredns",
    )
    if result.ok:
        return
    core = client.CoreV1Api(api)
    try:
        pods = core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns", _request_timeout=10)
        problems = kube.diagnose_pods(core, "kube-system", pods.items)
    except kube.api_errors() as exc:
        LOG.debug("coredns pods: %s", exc)
        problems = []
    detail = "; ".join(p.line() for p in problems) or result.error or "deployment not available"
    raise TransientFailure(
        f"CoreDNS is not available: {detail}",
        kube.remedy_for(problems) if problems else "check `kubectl -n kube-system describe deploy coredns`",
    )


def begin(ctx: Context) -> None:
    """Configure and start K3s without waiting (the engine calls this before the connectivity check)."""
    _configure_and_start(ctx)


def _configure_and_start(ctx: Context) -> None:
    config = ctx.require_config()
    try:
        reload = _write_config(ctx, config)
    except OSError as exc:
        raise PermanentFailure(
            f"cannot write the K3s configuration: {exc}", "check /etc/rancher/k3s"
        ) from None
    _start(ctx, unit_name(config), reload)


def run(ctx: Context) -> None:
    """Configure and start K3s; wait for node Ready, CoreDNS and cluster DNS (servers)."""
    config = ctx.require_config()
    unit = unit_name(config)
    if META.name in ctx.begun:
        # begin() started it moments ago; a retry of this step (K3s failed) starts it again.
        ctx.begun.discard(META.name)
    else:
        _configure_and_start(ctx)
    # After the start and the checks begin() let run beside it, not before: the background imports would
    # compete with systemctl and the checks for the CPU; they overlap the wait for K3s instead (arc needs
    # the Azure SDK and sign-in next).
    kube.prewarm()
    if config.arc is not None:
        arm.prewarm(ctx)
    deadline = time.monotonic() + _ready_budget(ctx, config)
    kubeconfig = ctx.path(AGENT_KUBECONFIG if config.k3s.role is Role.AGENT else kube.KUBECONFIG)
    ctx.progress(f"{unit} started; waiting for {kubeconfig.name}")
    if not _wait_file(ctx, kubeconfig, deadline):
        raise TransientFailure(
            f"{unit} did not write {kubeconfig} within {_ready_budget(ctx, config):g} s",
            REMEDY_UNIT.format(unit=unit),
        )
    if config.k3s.role is Role.SERVER:
        fix_kubeconfig_mode(kubeconfig)
    try:
        api = kube.client_from(kubeconfig)
    except kube.KubeUnavailable as exc:
        raise TransientFailure(str(exc), REMEDY_UNIT.format(unit=unit)) from None
    with api:
        wait_node(ctx, api, config.hostname, deadline)
        if config.k3s.role is Role.AGENT:
            return
        wait_coredns(ctx, api, deadline)
    failures = resolve_cluster_names(ctx, config)
    if failures:
        host, port = cluster_dns_address(ctx, config)
        raise TransientFailure(
            f"cluster DNS {host}:{port} does not resolve: {'; '.join(failures)}",
            "check CoreDNS (`kubectl -n kube-system logs deploy/coredns`) and its upstreams in "
            "/etc/rancher/k3s/resolv.conf (dns.pod_upstream_servers)",
        )


def check(ctx: Context) -> CheckResult:
    """Read-only: kubeconfig 0600, node Ready, CoreDNS available, cluster DNS resolving (servers)."""
    config = ctx.require_config()
    unit = unit_name(config)
    kubeconfig = ctx.path(AGENT_KUBECONFIG if config.k3s.role is Role.AGENT else kube.KUBECONFIG)
    if not kubeconfig.exists():
        return CheckResult(
            False, f"{kubeconfig} is missing: {unit} has not started", REMEDY_UNIT.format(unit=unit)
        )
    problem = kubeconfig_mode_problem(kubeconfig) if config.k3s.role is Role.SERVER else None
    if problem:
        return CheckResult(False, problem, f"chmod 0600 {kubeconfig} (Arc onboarding refuses it)")
    try:
        with kube.client_from(kubeconfig) as api:
            core = client.CoreV1Api(api)
            nodes = core.list_node(
                field_selector=f"metadata.name={config.hostname}", _request_timeout=5
            ).items
            if not nodes or not kube.node_ready(nodes[0]):
                return CheckResult(
                    False,
                    f"node {config.hostname}: {_node_message(nodes[0] if nodes else None)}",
                    f"`kubectl describe node {config.hostname}`; `journalctl -u {unit} -b`",
                )
            if config.k3s.role is Role.AGENT:
                return CheckResult(True, f"agent node {config.hostname} Ready")
            dep = client.AppsV1Api(api).read_namespaced_deployment(
                "coredns", "kube-system", _request_timeout=5
            )
            if not kube.deployment_available(dep):
                return CheckResult(
                    False, "CoreDNS is not available", "`kubectl -n kube-system describe deploy coredns`"
                )
    except kube.api_errors() as exc:
        return CheckResult(False, f"cannot query the cluster: {exc}", REMEDY_UNIT.format(unit=unit))
    failures = resolve_cluster_names(ctx, config)
    if failures:
        return CheckResult(False, f"cluster DNS: {'; '.join(failures)}", "check CoreDNS and its upstreams")
    return CheckResult(True, f"node {config.hostname} Ready, CoreDNS available, cluster DNS resolves")
