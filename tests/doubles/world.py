"""A whole onboarding world for `firstboot run` as a program: H3's preflight world (chronyd, dnsmasq, TLS,
CONNECT proxy on loopback) plus the Kubernetes API double, dnsmasq as the cluster DNS, the ARM + Entra ID
double (HTTPS, in this process) for firstboot's Azure SDK, and the systemctl and az doubles on PATH. Used
by the resume and secrets tests and by the bench."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doubles.arm_double import ArmConfig, ArmDouble, Compliance, Logged
from doubles.harness import (
    K3S_TOKEN,
    arm_env,
    az_env,
    dnsmasq,
    doubles_path,
    flux_section,
    kube_double,
    local_clients,
    pods_on_extension,
    read_jsonl,
)
from doubles.kube_api import KubeServer

SP_SECRET = "planted-sp-secret-Hv5nQ1"
GIT_SECRET = "planted-git-token-Lc8rT4"
CLIENT_ID = "00000000-0000-0000-0000-000000000003"  # fixtures.guestinfo.onboarding_config's arc.client_id
ARC_PODS = ("clusterconnect-agent-6c8b", "config-agent-7b5c", "kube-aad-proxy-5b9d", "metrics-agent-7c6d")
FLUX_PODS = ("fluxconfig-agent-5f6c", "source-controller-7f8c", "kustomize-controller-8d7b")


@dataclass(frozen=True)
class Latencies:
    """Simulated latencies (seconds) of the slow links; the critical path is their sum."""

    kubeconfig: float = 0.2  # k3s writes its kubeconfig
    node: float = 0.4  # node Ready (from the start of k3s)
    coredns: float = 0.4
    connect: float = 0.4  # az connectedk8s connect
    arc_pods: float = 0.2
    extension: float = 0.3  # the Flux extension's operation in Resource Manager
    flux_pods: float = 0.2
    flux_create: float = 0.2  # each Flux configuration's operation
    compliance: float = 0.2  # Flux reconciling, after the configuration is created

    def critical_path(self) -> float:
        """Seconds the run must wait in the doubles, whatever firstboot does."""
        k3s = self.kubeconfig + max(self.node - self.kubeconfig, self.coredns - self.kubeconfig, 0.0)
        return (
            k3s
            + self.connect
            + self.arc_pods
            + self.extension
            + self.flux_pods
            + self.flux_create
            + self.compliance
        )


@dataclass
class World:
    """Everything `firstboot run --root ROOT --source file:META` needs; `env` is the child's environment."""

    root: Path
    meta: Path
    workdir: Path
    env: dict[str, str]
    kube: KubeServer
    arm: ArmDouble
    config: dict[str, Any]
    secrets: dict[str, Any]
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def arm_writes(self, kind: str) -> list[Logged]:
        """The PUTs firstboot sent to Resource Manager for `kind` (extensions, fluxConfigurations)."""
        return [r for r in self.arm.requests(arm_only=True) if r.method == "PUT" and f"/{kind}/" in r.path]

    def argv(self, *extra: str) -> list[str]:
        """`firstboot run` for this world (the venv's console script, else `python -m`)."""
        script = Path(sys.executable).parent / "firstboot"
        head = [str(script)] if script.exists() else [sys.executable, "-m", "firstboot.cli"]
        return [*head, "run", "--root", str(self.root), "--source", f"file:{self.meta}", *extra]

    def az_calls(self, *words: str) -> list[list[str]]:
        """Recorded az argv lists starting with `words`."""
        calls = [entry["argv"] for entry in read_jsonl(self.workdir / "az" / "az-argv.log")]
        return [argv for argv in calls if argv[: len(words)] == list(words)]

    def az_double_seconds(self, *, besides: tuple[str, ...] = ()) -> float:
        """What the az double itself cost (start-up and work beyond its latencies) over its calls, but
        those whose command is one of `besides`."""
        times = read_jsonl(self.workdir / "az" / "az-times.log")
        counted = [e for e in times if not (e["argv"] and e["argv"][0] in besides)]
        return float(sum(e["ended"] - e["started"] - e["slept"] for e in counted))

    def status(self) -> dict[str, Any]:
        """status.json (empty before the first write)."""
        try:
            doc: dict[str, Any] = json.loads((self.root / "var/lib/arcbake/status.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def stamped(self, step: str, instance_id: str = "vm-1") -> bool:
        """Whether `step` is stamped done for the instance."""
        return (self.root / f"var/lib/arcbake/instances/{instance_id}/{step}.done").exists()


@contextlib.contextmanager
def arm_world(
    workdir: Path,
    tenant: str,
    server: KubeServer,
    lat: Latencies,
    *,
    client_id: str = CLIENT_ID,
    secret: str = SP_SECRET,
) -> Iterator[tuple[ArmDouble, Path]]:
    """The ARM double for a world (its CA file beside): the service principal `client_id` signing in with
    `secret` (default the test one), the latencies of the extension and the configurations, compliance
    after `lat.compliance`, the Flux controllers' pods created in `server` once the extension is installed
    (also used by tools/demo_guests.py with the demo fleet's principal)."""
    from fixtures.tls import make_ca, make_cert

    ca = make_ca(workdir / "arm-ca", "ARM double CA")
    leaf = make_cert(ca, workdir / "arm-leaf", ["localhost", "127.0.0.1"])
    config = ArmConfig(
        tenant=tenant,
        principals={client_id: secret},
        lro_type_seconds={"extensions": lat.extension, "fluxconfigurations": lat.flux_create},
        default_compliance=Compliance("Compliant", after=lat.compliance),
        on_created=pods_on_extension(server, [{"name": n, "ready_after": lat.flux_pods} for n in FLUX_PODS]),
    )
    with ArmDouble(leaf.cert, leaf.key, config) as arm:
        yield arm, ca.cert


@contextlib.contextmanager
def onboarding_world(
    preflight: Any,
    root: Path,
    workdir: Path,
    latencies: Latencies | None = None,
    cluster_records: Mapping[str, str] | None = None,
    flux: dict[str, Any] | None = None,
    **az_extra: Any,
) -> Iterator[World]:
    """Start the doubles around H3's `preflight_world` and write the metadata file (`flux`: the config's
    flux section, default `flux_section()`)."""
    from fixtures.guestinfo import write_metadata

    lat = latencies or Latencies()
    preflight.prepare_root(root)
    hostname = preflight.config["hostname"]
    config = {
        **preflight.config,
        "flux": flux or flux_section(),
        "k3s": {"role": "server", "ready_timeout_seconds": 120},
    }
    arc = dict(config["arc"])
    arc.update(tags={"site": "lab"}, onboarding_timeout_seconds=300)
    config["arc"] = arc
    secrets = {
        "sp_secret": SP_SECRET,
        "git": {"cluster-config": {"https_user": "git", "https_key": GIT_SECRET}},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    meta = write_metadata(workdir / "meta.json", config, secrets=secrets)
    scenario = {
        "nodes": [{"name": hostname, "ready_after": lat.node}],
        "deployments": [{"namespace": "kube-system", "name": "coredns", "available_after": lat.coredns}],
    }
    (workdir / "k3s-scenario.json").write_text(json.dumps(scenario))
    local_clients(root)
    with (
        kube_double() as server,
        dnsmasq(cluster_records) as cluster_dns,
        arm_world(workdir, arc["tenant_id"], server, lat) as (arm, ca),
    ):
        source_kubeconfig = server.write_kubeconfig(workdir / "k3s-double.yaml")
        env = _node_env(preflight, workdir, root, workdir, source_kubeconfig, cluster_dns, lat)
        env.update(az_env(workdir / "az", az_config(lat, arm, ca, **az_extra)), **arm_env(arm, ca))
        yield World(root, meta, workdir, env, server, arm, config, secrets)


def az_config(
    lat: Latencies,
    arm: ArmDouble,
    ca: Path,
    *,
    client_id: str = CLIENT_ID,
    secret: str = SP_SECRET,
    **extra: Any,
) -> dict[str, Any]:
    """The az double's config: the service principal (default the test one), the connect latency and the
    agents' pods; connect puts the cluster into the ARM double."""
    return {
        "secret": secret,
        "client_id": client_id,
        "arm_url": arm.url,
        "arm_ca": str(ca),
        "latency": {"connectedk8s connect": lat.connect},
        "arc_pods": [{"name": n, "ready_after": lat.arc_pods} for n in ARC_PODS],
        **extra,
    }


def _node_env(
    preflight: Any,
    workdir: Path,
    root: Path,
    node_dir: Path,
    kubeconfig: Path,
    cluster_dns: str,
    lat: Latencies,
) -> dict[str, str]:
    """A node's `firstboot run` environment: the preflight seams, the doubles on PATH, its systemctl state."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AZ_DOUBLE", "SYSTEMCTL_DOUBLE"))},
        **preflight.env,
        "PATH": doubles_path(),
        "SYSTEMCTL_DOUBLE_LOG": str(node_dir / "systemctl.log"),
        "SYSTEMCTL_DOUBLE_STATE": str(node_dir / "systemctl.json"),
        "SYSTEMCTL_DOUBLE_ROOT": str(root),
        "SYSTEMCTL_DOUBLE_KUBECONFIG": str(kubeconfig),
        "SYSTEMCTL_DOUBLE_SCENARIO": str(node_dir / "k3s-scenario.json"),
        "SYSTEMCTL_DOUBLE_DELAY": str(lat.kubeconfig),
        "SYSTEMCTL_DOUBLE_CLUSTER": str(workdir / "k3s-cluster.json"),
        "SYSTEMCTL_DOUBLE_JOURNAL": str(workdir / "k3s-journal.jsonl"),
        "ARCBAKE_CLUSTER_DNS": cluster_dns,
    }


@dataclass(frozen=True)
class Node:
    """One clone of a multi-node world: host name (also its Kubernetes node name), the address other
    nodes' `server:` URLs name, its `k3s` contract section and the join token its secrets carry."""

    name: str
    address: str
    k3s: dict[str, Any]
    token: str | None = K3S_TOKEN

    @property
    def onboards(self) -> bool:
        """Whether this node starts its cluster (so it carries arc and flux)."""
        return self.k3s.get("role", "server") == "server" and not self.k3s.get("server_url")


@dataclass
class FleetWorld:
    """Several clones onboarding against shared doubles: one Kubernetes API, one az state, one K3s
    cluster registry (who initialised which cluster with which token, who joined)."""

    workdir: Path
    kube: KubeServer
    nodes: dict[str, World]

    def registry(self) -> dict[str, Any]:
        """The K3s double's cluster registry: initialising address -> token, etcd, members."""
        path = self.workdir / "k3s-cluster.json"
        doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return doc

    def refusals(self) -> list[dict[str, str]]:
        """What the K3s double refused to start (unit, K3s's message)."""
        return read_jsonl(self.workdir / "k3s-journal.jsonl")

    def az_calls(self, *words: str) -> list[list[str]]:
        """Every node's az calls starting with `words` (the nodes share one az log)."""
        return next(iter(self.nodes.values())).az_calls(*words)

    def arm_writes(self, kind: str) -> list[Logged]:
        """Every node's PUTs to Resource Manager for `kind` (the nodes share one ARM double)."""
        return next(iter(self.nodes.values())).arm_writes(kind)

    def run(self, names: list[str], timeout: float = 180.0) -> dict[str, subprocess.CompletedProcess[str]]:
        """`firstboot run` on the named nodes at once; their results."""
        procs = {
            n: subprocess.Popen(
                self.nodes[n].argv("-v"), env=self.nodes[n].env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )
            for n in names
        }  # fmt: skip
        out = {}
        for name, proc in procs.items():
            stdout, _ = proc.communicate(timeout=timeout)
            out[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "")
            self.nodes[name].runs.append(out[name])
        return out


@contextlib.contextmanager
def fleet_world(
    preflight: Any, workdir: Path, nodes: list[Node], latencies: Latencies | None = None
) -> Iterator[FleetWorld]:
    """A world per node around one preflight world, sharing the Kubernetes API, az and K3s doubles."""
    from fixtures.guestinfo import write_metadata

    lat = latencies or Latencies()
    workdir.mkdir(parents=True, exist_ok=True)
    tenant = preflight.config["arc"]["tenant_id"]
    with (
        kube_double() as server,
        dnsmasq() as cluster_dns,
        arm_world(workdir, tenant, server, lat) as (arm, ca),
    ):
        source_kubeconfig = server.write_kubeconfig(workdir / "k3s-double.yaml")
        worlds = {}
        for node in nodes:
            node_dir = workdir / node.name
            root = preflight.prepare_root(node_dir / "root")
            local_clients(root)
            config = {
                **preflight.config,
                "hostname": node.name,
                "k3s": {"ready_timeout_seconds": 120, **node.k3s},
            }
            secrets: dict[str, Any] = {"sp_secret": SP_SECRET}
            if node.onboards:
                arc = {**config["arc"], "cluster_name": f"arc-{node.name}", "onboarding_timeout_seconds": 300}
                config.update(arc=arc, flux=flux_section())
                secrets["git"] = {"cluster-config": {"https_user": "git", "https_key": GIT_SECRET}}
            else:
                config.pop("arc", None)
            if node.token is not None:
                secrets["k3s_token"] = node.token
            meta = write_metadata(
                node_dir / "meta.json", config, secrets=secrets, instance_id=f"vm-{node.name}"
            )
            scenario: dict[str, Any] = {"nodes": [{"name": node.name, "ready_after": lat.node}]}
            if node.onboards:
                scenario["deployments"] = [
                    {"namespace": "kube-system", "name": "coredns", "available_after": lat.coredns}
                ]
            (node_dir / "k3s-scenario.json").write_text(json.dumps(scenario))
            env = _node_env(preflight, workdir, root, node_dir, source_kubeconfig, cluster_dns, lat)
            env.update(az_env(workdir / "az", az_config(lat, arm, ca)), **arm_env(arm, ca))
            env["SYSTEMCTL_DOUBLE_ADDRESS"] = node.address
            # The nodes boot together: a joiner's K3s waits for its server, as K3s retries it.
            env["SYSTEMCTL_DOUBLE_JOIN_WAIT"] = "90"
            worlds[node.name] = World(root, meta, workdir, env, server, arm, config, secrets)
        yield FleetWorld(workdir, server, worlds)


def run_once(
    world: World, timeout: float = 120.0, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`firstboot run -v` to the end; the result is also kept in `world.runs`."""
    proc = subprocess.run(
        world.argv("-v"),
        env={**world.env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    world.runs.append(proc)
    return proc
