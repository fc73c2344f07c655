"""Fixtures of the systemd guest tests (root, systemd-nspawn, debootstrap; see guestroot.py).

- `guest_base` (session): the cached Debian 12 root (built on first use, about 90 s cold).
- `build_dir` (session): `builder render examples/rocky9.yaml`.
- `wheelhouse_dir` (session): `builder.wheelhouse.assemble()` for the guest (cached wheels).
- `arcbake_layer` (session): arcbake installed into an overlay layer over the base by the build dir's own
  provisioning scripts (provision.install_arcbake); cached under the guest cache by content hash.
- `new_guest()`: a fresh writable overlay of [arcbake_layer, base] per call; unmounted after the test.
- `guest_world`: a guest wired to real chronyd and dnsmasq on loopback (H3's preflight world), a CONNECT
  proxy and TLS endpoints, the Kubernetes API double as k3s.service, the az double, and the ARM + Entra ID
  double on the host's loopback for firstboot's Azure SDK; `boot()` it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from doubles.arm_double import ArmDouble
from doubles.harness import pods_on_extension
from fixtures.dnsserver import DnsmasqHandle
from fixtures.firstboot_plugin import PreflightWorld
from fixtures.guestinfo import write_metadata

from builder import wheelhouse
from guest import guestroot, provision
from guest.guestroot import Boot, Guest

REPO = Path(__file__).resolve().parents[2]
SECRET = "guest-planted-secret-Q7v2-never-log"
HOSTNAME = "node1"
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how long the guest pieces took (cold or warm cache)."""
    if TIMINGS:
        terminalreporter.section("systemd test guest timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.2f} s  {name}")


@pytest.fixture(scope="session")
def guest_base() -> Path:
    if os.geteuid() != 0:
        # Not a skip: the suite is meant to run as root (CI does); a non-root run must not look green.
        pytest.fail("the systemd guest tests need root (debootstrap, overlay mounts, systemd-nspawn)")
    base = guestroot.ensure_base()
    TIMINGS["base root (" + ("cold: debootstrap" if base.built else "warm: cached") + ")"] = base.seconds
    return base.root


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("guest-build") / "build"
    builder = REPO / ".venv" / "bin" / "builder"
    cmd = [str(builder) if builder.exists() else "builder", "render", str(REPO / "examples/rocky9.yaml")]
    proc = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def wheelhouse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("guest-wheelhouse")
    started = time.monotonic()
    # Session fixture: the autouse subp guard is function-scoped, so pip runs unguarded here.
    wheelhouse.assemble(dest, cache_dir=REPO / ".cache" / "wheelhouse-test")
    TIMINGS["wheelhouse assembly"] = time.monotonic() - started
    return dest


def _layer_hash(build_dir: Path, wheels: Path) -> str:
    digest = hashlib.sha256(guestroot.recipe_hash().encode())
    inputs = [
        *sorted(wheels.glob("*.whl")),
        wheels / "requirements.txt",
        build_dir / "scripts/30-install-firstboot.sh",
        build_dir / "scripts/40-enable-units.sh",
        *sorted(p for p in (build_dir / "rootfs").rglob("*") if p.is_file()),
        *sorted(p for p in (REPO / "tests/doubles").iterdir() if p.is_file()),
        Path(provision.__file__),
    ]
    for path in inputs:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def arcbake_layer(guest_base: Path, build_dir: Path, wheelhouse_dir: Path) -> Path:
    """The upper dir of an overlay in which arcbake was installed; a read-only lower layer for tests."""
    started = time.monotonic()
    layers = guestroot.CACHE / "layers"
    final = layers / _layer_hash(build_dir, wheelhouse_dir)
    built = False
    # Under a lock: a concurrent session waits for the build instead of racing it.
    with guestroot.locked(guestroot.CACHE / "layers.lock"):
        if not final.is_dir():
            layers.mkdir(parents=True, exist_ok=True)
            for stale in layers.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            # Layers of earlier code: keep the two newest (a concurrent session may still use one).
            old = sorted(
                (p for p in layers.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime
            )
            for layer in old[:-2]:
                shutil.rmtree(layer, ignore_errors=True)
            work = Path(tempfile.mkdtemp(dir=layers, prefix=".tmp-"))
            (work / "staging").mkdir()
            with Guest([guest_base], work) as guest:
                provision.install_arcbake(guest, build_dir, wheelhouse_dir, work / "staging")
            # The upper dir holds exactly what installing arcbake changed; rename makes it visible at once.
            (work / "upper").rename(final)
            shutil.rmtree(work, ignore_errors=True)
            built = True
    label = "arcbake layer (installed with 30-install-firstboot.sh)" if built else "arcbake layer (cached)"
    TIMINGS[label] = time.monotonic() - started
    return final


@pytest.fixture
def new_guest(arcbake_layer: Path, guest_base: Path, tmp_path: Path) -> Iterator[Callable[[], Guest]]:
    made: list[Guest] = []

    def make() -> Guest:
        started = time.monotonic()
        guest = Guest([arcbake_layer, guest_base], tmp_path / f"guest{len(made)}")
        TIMINGS.setdefault("per-test overlay mount", time.monotonic() - started)
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()
        # The upper dir can be large (journals, venv writes): keep failed tests' dirs small on disk.
        shutil.rmtree(guest.workdir / "work", ignore_errors=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the guest shares the host's network namespace)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kube_scenario(arc_pods_ready: bool = False) -> dict[str, Any]:
    """This node and CoreDNS ready soon; with `arc_pods_ready`, the azure-arc agents K3s would still run."""
    scenario: dict[str, Any] = {
        "nodes": [{"name": HOSTNAME, "ready_after": 0.5}],
        "deployments": [
            {
                "namespace": "kube-system",
                "name": "coredns",
                "available_after": 0.5,
                "labels": {"k8s-app": "kube-dns"},
            }
        ],
        "pods": [
            {
                "namespace": "kube-system",
                "name": "coredns-6799fbcd5-x2x9k",
                "labels": {"k8s-app": "kube-dns"},
                "ready_after": 0.5,
            }
        ],
    }
    if arc_pods_ready:
        # ... and the agents' record of the connected cluster they belong to (firstboot.arcowner).
        record = {"AZURE_RESOURCE_GROUP": "rg-edge", "AZURE_RESOURCE_NAME": "arc-node1"}
        scenario["configmaps"] = [{"namespace": "azure-arc", "name": "azure-clusterconfig", "data": record}]
        scenario["pods"] += [
            {"namespace": "azure-arc", "name": name, "ready_after": 0.2}
            for name in ("clusterconnect-agent-6c8b", "config-agent-7b5c", "controller-manager-6d4b")
        ]
    return scenario


@dataclass
class GuestWorld:
    """A provisioned guest plus the loopback world it boots into."""

    guest: Guest
    preflight: PreflightWorld
    arm: ArmDouble
    cluster_dns: DnsmasqHandle
    kube_port: int
    config: dict[str, Any]
    secrets: dict[str, Any]
    az_config: dict[str, Any] = field(default_factory=dict)
    unit_env: dict[str, str] = field(default_factory=dict)
    resolv_conf: str = "nameserver 127.0.0.1\n"
    scenario: dict[str, Any] = field(default_factory=kube_scenario)
    guestinfo_extra: dict[str, str] = field(default_factory=dict)
    boots: list[Boot] = field(default_factory=list)

    def prepare(self, *, guestinfo: bool = True) -> None:
        """Write the per-test wiring into the guest; `guestinfo=False` keeps what a previous boot left."""
        info = None
        if guestinfo:
            with tempfile.TemporaryDirectory() as tmp:
                meta = write_metadata(
                    Path(tmp) / "meta.json", self.config, secrets=self.secrets, instance_id="vm-guest-1"
                )
                info = json.loads(meta.read_text()) | self.guestinfo_extra
        arc = self.config["arc"]
        self.arm.config.tenant = arc["tenant_id"]
        self.arm.config.principals = {arc["client_id"]: self.secrets["sp_secret"]}
        flux_pods = [{"name": "source-controller-7f8c", "ready_after": 0.2}]
        self.arm.config.on_created = pods_on_extension(f"http://127.0.0.1:{self.kube_port}", flux_pods)
        env = {
            "ARCBAKE_DNS_PORT": str(self.preflight.dns.port),
            "ARCBAKE_CLUSTER_DNS": f"127.0.0.1:{self.cluster_dns.port}",
            "ARCBAKE_ARM_ENDPOINT": self.arm.url,
            "ARCBAKE_AZURE_AUTHORITY": self.arm.url,
            "ARCBAKE_AZURE_CA_BUNDLE": provision.CA_FILE,
            **self.unit_env,
        }
        provision.configure(
            self.guest,
            guestinfo=info if info is not None else provision.guestinfo(self.guest),
            unit_env=env,
            kube_port=self.kube_port,
            kube_scenario=self.scenario,
            az_config={"arm_url": self.arm.url, "arm_ca": provision.CA_FILE, **self.az_config},
            ca_pem=self.preflight.pki.ca.cert.read_bytes(),
            resolv_conf=self.resolv_conf,
        )

    def boot(self, timeout: float = 120, kill_when: Callable[[], bool] | None = None) -> Boot:
        """Boot until the guest powers itself off (or `kill_when` fires); remember the boot."""
        result = self.guest.boot(timeout=timeout, kill_when=kill_when)
        self.boots.append(result)
        number = sum(name.startswith("boot ") for name in TIMINGS) + 1
        TIMINGS[f"boot {number} ({'killed' if result.killed else 'powered itself off'})"] = result.seconds
        return result

    def statuses(self) -> list[dict[str, Any]]:
        """Every guestinfo.arcbake.status firstboot wrote, in order."""
        return provision.status_updates(self.guest)

    def az_calls(self, *words: str) -> list[list[str]]:
        """argv of every az invocation whose words start with `words`."""
        calls = [entry["argv"] for entry in provision.read_jsonl(self.guest, provision.AZ_LOG)]
        return [argv for argv in calls if argv[: len(words)] == list(words)]

    def unit_journal(self) -> str:
        """Every line the unit logged, under its SyslogIdentifier, read from the host."""
        return self.guest.journal("-t", "arcbake-firstboot", "-o", "cat")

    def stamped(self) -> set[str]:
        """Steps stamped done for this instance."""
        d = self.guest.path("/var/lib/arcbake/instances/vm-guest-1")
        return {p.name.removesuffix(".done") for p in d.glob("*.done")} if d.is_dir() else set()


@pytest.fixture
def guest_world(
    new_guest: Callable[[], Guest],
    preflight_world: PreflightWorld,
    start_dns: Callable[..., DnsmasqHandle],
    arm: ArmDouble,
) -> Iterator[GuestWorld]:
    # "CoreDNS": the names the k3s step resolves through the cluster DNS service IP.
    cluster_dns = start_dns(
        {"kubernetes.default.svc.cluster.local": "10.43.0.1", "management.azure.com": "127.0.0.1"}
    )
    world = GuestWorld(
        guest=new_guest(),
        preflight=preflight_world,
        arm=arm,
        cluster_dns=cluster_dns,
        kube_port=free_port(),
        config=json.loads(json.dumps(preflight_world.config)),
        secrets={"sp_secret": SECRET},
    )
    world.guest.write("/etc/machine-id", uuid.uuid4().hex + "\n")
    yield world
    with contextlib.suppress(OSError):
        world.guest.close()
