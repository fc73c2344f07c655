"""Shared pieces for the k3s/arc/flux tests, the resume test and the bench: configs, contexts, and the
doubles started on loopback (Kubernetes API double, dnsmasq as the cluster DNS, PATH with `az` and
`systemctl` doubles)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from doubles.arm_double import ArmDouble
from doubles.kube_api import KubeServer
from firstboot import azcli, kube
from firstboot.contract import OnboardingConfig, OnboardingSecrets
from firstboot.step import Context

DOUBLES = Path(__file__).resolve().parent
HOSTNAME = "node-a"
GUID_SUB = "11111111-1111-1111-1111-111111111111"
GUID_TENANT = "22222222-2222-2222-2222-222222222222"
GUID_CLIENT = "33333333-3333-3333-3333-333333333333"
SP_SECRET = "planted-sp-secret-Zq9vX2"
GIT_KEY = "planted-git-token-Yk4wP7"
K3S_TOKEN = "planted-k3s-token-Rm3tN8"


def flux_section() -> dict[str, Any]:
    """One Flux configuration with two kustomizations (the second depends on the first)."""
    return {
        "configurations": [
            {
                "name": "cluster-config",
                "url": "https://git.example.com/org/fleet.git",
                "branch": "main",
                "kustomizations": [
                    {"name": "infra", "path": "./infra"},
                    {"name": "apps", "path": "./apps", "depends_on": ["infra"]},
                ],
            }
        ]
    }


def config_dict(**overrides: Any) -> dict[str, Any]:
    """A valid server config (onboarding config model) as a dict, with top-level overrides."""
    doc: dict[str, Any] = {
        "hostname": HOSTNAME,
        "time": {"ntp_servers": ["127.0.0.1"]},
        "k3s": {"role": "server", "ready_timeout_seconds": 30},
        "arc": {
            "cluster_name": "arc-node-a",
            "resource_group": "rg-edge",
            "location": "westeurope",
            "subscription_id": GUID_SUB,
            "tenant_id": GUID_TENANT,
            "client_id": GUID_CLIENT,
            "tags": {"site": "lab", "owner": "ops"},
            "onboarding_timeout_seconds": 300,
        },
        "flux": flux_section(),
    }
    doc.update(overrides)
    return doc


def make_config(**overrides: Any) -> OnboardingConfig:
    """`config_dict` validated."""
    return OnboardingConfig.model_validate(config_dict(**overrides))


def make_secrets(**overrides: Any) -> OnboardingSecrets:
    """Secrets matching `config_dict` (SP secret, Git token)."""
    doc: dict[str, Any] = {
        "sp_secret": SP_SECRET,
        "git": {"cluster-config": {"https_user": "git", "https_key": GIT_KEY}},
    }
    doc.update(overrides)
    return OnboardingSecrets.model_validate(doc)


class DictSource:
    """An in-memory guestinfo source."""

    name = "dict"

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values = dict(values or {})

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value


def doubles_path() -> str:
    """PATH with the doubles first, then this Python's bin dir (so `#!/usr/bin/env python3` finds yaml)."""
    return os.pathsep.join([str(DOUBLES), str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def arm_env(arm: ArmDouble, ca: Path) -> dict[str, str]:
    """firstboot's test seams pointing the Azure SDK at the ARM double (firstboot/arm.py)."""
    return {
        "ARCBAKE_ARM_ENDPOINT": arm.url,
        "ARCBAKE_AZURE_AUTHORITY": arm.url,
        "ARCBAKE_AZURE_CA_BUNDLE": str(ca),
    }


def local_clients(root: Path) -> None:
    """The image's helm and K3s's kubectl link (stand-ins: az connectedk8s only needs them to exist)."""
    for guest in (azcli.HELM_PATH, azcli.KUBECTL_PATH):
        path = root / guest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)


def pods_on_extension(
    server: KubeServer | str, pods: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], None]:
    """An ARM double hook: the Flux controllers' pods appear in the Kubernetes API double once the
    extension is installed (what the microsoft.flux extension's helm release does on a real cluster).
    `server`: the double in this process, or the URL of one elsewhere (its `POST /_double/objects`)."""

    def created(doc: dict[str, Any]) -> None:
        if doc["type"] != "Microsoft.KubernetesConfiguration/extensions":
            return
        objects = {"pods": [{"namespace": "flux-system", **p} for p in pods]}
        if isinstance(server, KubeServer):
            server.store.load(objects)
            return
        request = urllib.request.Request(  # noqa: S310 - the loopback URL of the test's API double
            server.rstrip("/") + "/_double/objects",
            data=json.dumps(objects).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as resp:
            resp.read()

    return created


def az_ctx(
    tmp_path: Path,
    server: KubeServer,
    az_config: Mapping[str, Any],
    *,
    arm: ArmDouble,
    ca: Path,
    config: OnboardingConfig | None = None,
    secrets: OnboardingSecrets | None = None,
    time_scale: float = 1.0,
    flux_pods: list[dict[str, Any]] | None = None,
) -> Context:
    """A Context for the arc and flux steps: kubeconfig of `server` and the image's helm and kubectl under
    tmp_path/root; the ARM double `arm` (CA `ca`) for the SDK; the az double (state in tmp_path/az)
    accepting the test service principal and putting connected clusters into `arm`, plus `az_config`."""
    root = tmp_path / "root"
    server.write_kubeconfig(root / kube.KUBECONFIG.lstrip("/"))
    local_clients(root)
    az = {"secret": SP_SECRET, "client_id": GUID_CLIENT, "arm_url": arm.url, "arm_ca": str(ca), **az_config}
    env = {**az_env(tmp_path / "az", az), **arm_env(arm, ca)}
    if flux_pods is not None:
        arm.config.on_created = pods_on_extension(server, flux_pods)
    return make_ctx(root, config or make_config(), secrets or make_secrets(), env, time_scale=time_scale)


def make_ctx(
    root: Path,
    config: OnboardingConfig,
    secrets: OnboardingSecrets | None = None,
    env: Mapping[str, str] | None = None,
    time_scale: float = 1.0,
) -> Context:
    """A Context as the engine builds it after the metadata step."""
    base = {"PATH": doubles_path(), "HOME": str(root)}
    ctx = Context(root=root, source=DictSource(), instance_id="iid-test", config=config, secrets=secrets)
    ctx.env = {**base, **(env or {})}
    ctx.time_scale = time_scale
    return ctx


@contextlib.contextmanager
def kube_double(scenario: dict[str, Any] | None = None) -> Iterator[KubeServer]:
    """The Kubernetes API double on a free loopback port; stopped on exit."""
    server = KubeServer("127.0.0.1", 0, scenario or {}).start()
    try:
        yield server
    finally:
        server.stop()


def cluster_scenario(ready_after: float | None = 0.2, coredns_after: float | None = 0.2) -> dict[str, Any]:
    """This node and CoreDNS, ready after the given seconds (None: never)."""
    return {
        "nodes": [{"name": HOSTNAME, "ready_after": ready_after}],
        "deployments": [
            {
                "namespace": "kube-system",
                "name": "coredns",
                "available_after": coredns_after,
                "labels": {"k8s-app": "kube-dns"},
            }
        ],
        "pods": [
            {
                "namespace": "kube-system",
                "name": "coredns-6799fbcd5-x2x9k",
                "labels": {"k8s-app": "kube-dns"},
                "ready_after": coredns_after,
            }
        ],
    }


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A free loopback port (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def dnsmasq(records: Mapping[str, str] | None = None) -> Iterator[str]:
    """dnsmasq on a loopback port answering `records` (name -> IPv4), NXDOMAIN for the rest.

    Yields `127.0.0.1:PORT` (the value of ARCBAKE_CLUSTER_DNS).
    """
    records = records or {
        "kubernetes.default.svc.cluster.local": "10.43.0.1",
        "management.azure.com": "10.9.9.9",
    }
    workdir = Path(tempfile.mkdtemp(prefix="h4-dnsmasq-"))
    hosts = workdir / "hosts"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in records.items()))
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    for _attempt in range(5):
        port = free_port()
        conf = workdir / "dnsmasq.conf"
        conf.write_text(
            f"port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
            f"addn-hosts={hosts}\npid-file={workdir}/pid\nlocal=/\n"
        )
        proc = subprocess.Popen([binary, "-k", "-C", str(conf), "--user=root"], stderr=subprocess.PIPE)
        time.sleep(0.15)
        if proc.poll() is None:
            break
    else:
        raise RuntimeError(f"dnsmasq did not start: {proc.stderr.read() if proc.stderr else b''!r}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSON-lines log (missing file: none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def az_env(workdir: Path, az_config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Environment for the az double: state, argv log and config files in `workdir`.

    `AZURE_CONFIG_DIR` too (firstboot replaces it with its own): a login saves the credentials there, as az
    does, and never in the home directory of whoever runs the tests.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "az-double.json"
    config_path.write_text(json.dumps(dict(az_config or {})))
    return {
        "AZURE_CONFIG_DIR": str(workdir / "azure-config"),
        "AZ_DOUBLE_STATE": str(workdir / "az-state.json"),
        "AZ_DOUBLE_LOG": str(workdir / "az-argv.log"),
        "AZ_DOUBLE_TIMES": str(workdir / "az-times.log"),
        "AZ_DOUBLE_CONFIG": str(config_path),
    }


def az_calls(workdir: Path, *words: str) -> list[list[str]]:
    """The argv of every az call recorded in `workdir` whose command starts with `words`."""
    calls = [entry["argv"] for entry in read_jsonl(workdir / "az-argv.log")]
    return [argv for argv in calls if argv[: len(words)] == list(words)]


def arc_pods(ready_after: float = 0.2) -> list[dict[str, Any]]:
    """A small set of azure-arc agent pods for the az double to create on connect."""
    names = ("clusterconnect-agent-6c8b", "config-agent-7b5c", "kube-aad-proxy-5b9d")
    return [{"name": n, "ready_after": ready_after} for n in names]


def az_envs(workdir: Path, *words: str) -> list[dict[str, str]]:
    """The recorded environment (AZURE_CONFIG_DIR, REQUESTS_CA_BUNDLE, proxy) of matching az calls."""
    entries = read_jsonl(workdir / "az-argv.log")
    return [e.get("env", {}) for e in entries if e["argv"][: len(words)] == list(words)]
