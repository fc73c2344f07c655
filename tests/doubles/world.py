"""A whole onboarding world for `firstboot run` as a program: H3's preflight world (chronyd, dnsmasq, TLS,
CONNECT proxy on loopback) plus the Kubernetes API double, dnsmasq as the cluster DNS, and the systemctl
and az doubles on PATH. Used by the resume and secrets tests and by the bench."""

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

from doubles.harness import az_env, dnsmasq, doubles_path, flux_section, kube_double, read_jsonl
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
    extension: float = 0.3  # az k8s-extension create
    flux_pods: float = 0.2
    flux_create: float = 0.2
    compliance: float = 0.2

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
    config: dict[str, Any]
    secrets: dict[str, Any]
    runs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def argv(self, *extra: str) -> list[str]:
        """`firstboot run` for this world (the venv's console script, else `python -m`)."""
        script = Path(sys.executable).parent / "firstboot"
        head = [str(script)] if script.exists() else [sys.executable, "-m", "firstboot.cli"]
        return [*head, "run", "--root", str(self.root), "--source", f"file:{self.meta}", *extra]

    def az_calls(self, *words: str) -> list[list[str]]:
        """Recorded az argv lists starting with `words`."""
        calls = [entry["argv"] for entry in read_jsonl(self.workdir / "az" / "az-argv.log")]
        return [argv for argv in calls if argv[: len(words)] == list(words)]

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
def onboarding_world(
    preflight: Any, root: Path, workdir: Path, latencies: Latencies | None = None, **az_extra: Any
) -> Iterator[World]:
    """Start the doubles around H3's `preflight_world` and write the metadata file."""
    from fixtures.guestinfo import write_metadata

    lat = latencies or Latencies()
    preflight.prepare_root(root)
    hostname = preflight.config["hostname"]
    config = {
        **preflight.config,
        "flux": flux_section(),
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
    az_config = {
        "secret": SP_SECRET,
        "client_id": CLIENT_ID,
        "latency": {
            "connectedk8s connect": lat.connect,
            "k8s-extension create": lat.extension,
            "k8s-configuration flux create": lat.flux_create,
        },
        "arc_pods": [{"name": n, "ready_after": lat.arc_pods} for n in ARC_PODS],
        "flux_pods": [{"name": n, "ready_after": lat.flux_pods} for n in FLUX_PODS],
        "compliance": {"cluster-config": {"state": "Compliant", "after": lat.compliance}},
        **az_extra,
    }
    with kube_double() as server, dnsmasq() as cluster_dns:
        source_kubeconfig = server.write_kubeconfig(workdir / "k3s-double.yaml")
        env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AZ_DOUBLE", "SYSTEMCTL_DOUBLE"))},
            **preflight.env,
            **az_env(workdir / "az", az_config),
            "PATH": doubles_path(),
            "SYSTEMCTL_DOUBLE_LOG": str(workdir / "systemctl.log"),
            "SYSTEMCTL_DOUBLE_STATE": str(workdir / "systemctl.json"),
            "SYSTEMCTL_DOUBLE_ROOT": str(root),
            "SYSTEMCTL_DOUBLE_KUBECONFIG": str(source_kubeconfig),
            "SYSTEMCTL_DOUBLE_SCENARIO": str(workdir / "k3s-scenario.json"),
            "SYSTEMCTL_DOUBLE_DELAY": str(lat.kubeconfig),
            "ARCBAKE_CLUSTER_DNS": cluster_dns,
        }
        yield World(root, meta, workdir, env, server, config, secrets)


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
