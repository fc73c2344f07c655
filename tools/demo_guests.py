"""The demo's guests: play each clone's first boot on this machine, and carry its status into vSphere.

The simulator runs no guest OS, so the demo plays the guests: for every VM of the fleet, `firstboot run`
runs in its own `--root` with `--source file:` holding the guestinfo keys deploy wrote into that VM
(read back through the vSphere API: the same metadata, instance id, config and secrets), except that the
config's time, dns and proxy sections point at the loopback servers of tests/fixtures/preflight.py
(chronyd, dnsmasq, a TLS server behind a CONNECT proxy). K3s, Arc and Flux are the doubles of
tests/doubles: one Kubernetes API double per cluster (its scenario names every node), dnsmasq as the
cluster DNS, the systemctl double enforcing K3s's flags and join token through a cluster registry, the az
double (connectedk8s connect) and the ARM + Entra ID double (HTTPS with its own CA, started by
tests/doubles/world.py's `arm_world` as in the tests) accepting the fleet's service principal.
Initialising servers boot first, then the nodes that join them. While a guest runs, what it writes to its
source (`guestinfo.arcbake.status`, and `---` over the secrets once read) is copied into its VM through
the vSphere API, as `vmware-rpctool info-set` does inside a real clone, so `builder status` and `builder
report` read it like any other guest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from doubles.harness import arm_env, az_env, dnsmasq, doubles_path, kube_double, local_clients  # noqa: E402
from doubles.world import Latencies, arm_world, az_config  # noqa: E402
from fixtures.dnsserver import point_resolv_at_loopback  # noqa: E402
from fixtures.preflight import LoopbackPreflight, loopback_preflight  # noqa: E402

from builder.fleet import Fleet, FleetVM  # noqa: E402
from builder.vsphere import inventory  # noqa: E402
from builder.vsphere import vm as vmops  # noqa: E402
from builder.vsphere._vmomi import vim  # noqa: E402
from builder.vsphere.connection import Session  # noqa: E402
from firstboot import contract  # noqa: E402
from firstboot.encoding import GZIP_BASE64, decode, encode  # noqa: E402
from firstboot.endpoints import Endpoint, endpoints  # noqa: E402

PUSH_SECONDS = 0.5
RUN_TIMEOUT = 300.0
# Seconds the doubles take for the slow links (K3s up, node Ready, Arc connect, Flux): a short first boot.
LATENCIES = Latencies(
    kubeconfig=0.3,
    node=1.0,
    coredns=1.0,
    connect=1.5,
    arc_pods=0.5,
    extension=1.0,
    flux_pods=0.5,
    flux_create=0.5,
    compliance=0.5,
)


@dataclass
class Guest:
    """One clone to play."""

    fvm: FleetVM
    vm: Any  # the vSphere VM
    guestinfo: dict[str, str]  # its guestinfo.* keys as deploy wrote them
    config: dict[str, Any]  # the decoded guestinfo.arcbake.config

    @property
    def joins(self) -> str | None:
        """The host of the server this node joins (None: it initialises its cluster)."""
        url = self.config.get("k3s", {}).get("server_url")
        return urlsplit(url).hostname if url else None


@dataclass
class Played:
    """How one guest's first boot ended."""

    name: str
    exit_code: int
    state: str
    seconds: float
    log: Path


def read_guests(session: Session, fleet: Fleet) -> list[Guest]:
    """Every VM of the fleet with the guestinfo deploy wrote into it."""
    dc = inventory.datacenter(session, fleet.placement.datacenter)
    guests = []
    for fvm in fleet.vms:
        vm = inventory.vm(session, dc, fvm.name)
        extra = vmops.extra_config(vm)
        keys = {k: v for k, v in extra.items() if k.startswith("guestinfo.") and k != contract.KEY_STATUS}
        raw = keys[contract.KEY_CONFIG]
        text = decode(raw, keys.get(contract.KEY_CONFIG + contract.ENCODING_SUFFIX)).decode()
        guests.append(Guest(fvm, vm, keys, json.loads(text)))
    return guests


def _address(guest: Guest, guests: list[Guest]) -> str:
    """The address the cluster registry knows this node by: the one its joiners' server_url names."""
    for other in guests:
        if other.fvm.server == guest.fvm.name and other.joins:
            return other.joins
    return str(guest.config["hostname"])


def _targets(guests: list[Guest]) -> list[Endpoint]:
    seen: dict[str, Endpoint] = {}
    for guest in guests:
        for target in endpoints(contract.OnboardingConfig.model_validate(guest.config), environ={}):
            seen[f"{target.host}:{target.port}"] = target
    return list(seen.values())


def _source_file(guest: Guest, servers: LoopbackPreflight, path: Path) -> Path:
    """The `--source file:` mapping: the VM's own keys, the config pointed at the loopback servers."""
    config = {**guest.config, **servers.sections()}
    contract.OnboardingConfig.model_validate(config)
    keys = dict(guest.guestinfo)
    keys[contract.KEY_CONFIG] = encode(json.dumps(config), GZIP_BASE64)
    keys[contract.KEY_CONFIG + contract.ENCODING_SUFFIX] = GZIP_BASE64
    path.write_text(json.dumps(keys, indent=1), encoding="utf-8")
    path.chmod(0o600)  # it holds the (fake) secrets, as the VM's configuration does
    return path


def _principal(guests: list[Guest]) -> tuple[str, str, str]:
    """The tenant, client id and (fake) secret of the fleet's service principal, as deploy wrote them."""
    server = next(g for g in guests if g.config.get("arc"))
    secrets_raw = server.guestinfo[contract.KEY_SECRETS]
    secrets = json.loads(decode(secrets_raw, server.guestinfo.get(contract.KEY_SECRETS + ".encoding")))
    arc = server.config["arc"]
    return str(arc["tenant_id"]), str(arc["client_id"]), str(secrets.get("sp_secret"))


@contextmanager
def _world(guests: list[Guest], work: Path) -> Iterator[tuple[LoopbackPreflight, dict[str, str]]]:
    """The servers and doubles every guest shares; yields them and the environment common to all."""
    with ExitStack() as stack:
        servers = stack.enter_context(loopback_preflight(work / "preflight", _targets(guests)))
        scenario = {
            "nodes": [{"name": g.config["hostname"], "ready_after": LATENCIES.node} for g in guests],
            "deployments": [
                {"namespace": "kube-system", "name": "coredns", "available_after": LATENCIES.coredns}
            ],
        }
        (work / "k3s-scenario.json").write_text(json.dumps(scenario))
        kube = stack.enter_context(kube_double())
        cluster_dns = stack.enter_context(dnsmasq())
        # The ARM + Entra ID double (HTTPS with its own CA) the guests' Azure SDK talks to, as the tests'.
        tenant, client_id, secret = _principal(guests)
        principal = {"client_id": client_id, "secret": secret}
        arm, ca = stack.enter_context(arm_world(work, tenant, kube, LATENCIES, **principal))
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("AZ_DOUBLE", "SYSTEMCTL_DOUBLE", "VSPHERE_"))
            },
            **servers.env,
            **az_env(work / "az", az_config(LATENCIES, arm, ca, **principal)),
            **arm_env(arm, ca),
            "PATH": doubles_path(),
            "SYSTEMCTL_DOUBLE_KUBECONFIG": str(kube.write_kubeconfig(work / "k3s-double.yaml")),
            "SYSTEMCTL_DOUBLE_SCENARIO": str(work / "k3s-scenario.json"),
            "SYSTEMCTL_DOUBLE_CLUSTER": str(work / "k3s-cluster.json"),
            "SYSTEMCTL_DOUBLE_DELAY": str(LATENCIES.kubeconfig),
            "ARCBAKE_CLUSTER_DNS": cluster_dns,
        }
        yield servers, env


def _carry(vm: Any, source: Path, pushed: dict[str, str]) -> dict[str, str]:
    """Copy into the VM every guestinfo key the guest wrote to its source file since the last call (its
    status; `---` over the secrets once read): what `vmware-rpctool info-set` does in a real clone."""
    try:
        current: dict[str, str] = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # mid-write: the next poll reads it whole
        return pushed
    changed = {k: v for k, v in current.items() if pushed.get(k) != v and v}
    if changed:
        vmops.set_extra_config(vm, changed, "guest writes")
    # An empty value (the secrets' encoding once redacted) removes the key: vSphere keeps no empty option.
    emptied = {k: "" for k, v in current.items() if pushed.get(k) != v and not v}
    if emptied:
        spec = vim.vm.ConfigSpec(extraConfig=vmops.option_values(emptied))
        vmops.wait(vm.ReconfigVM_Task(spec=spec), "guest writes")
    return current


def _boot(
    guest: Guest, guests: list[Guest], servers: LoopbackPreflight, env: Mapping[str, str], work: Path
) -> Played:
    name = guest.fvm.name
    root = point_resolv_at_loopback(work / name / "root")
    local_clients(root)  # the image's helm and K3s's kubectl link, as the tests' worlds have them
    meta = _source_file(guest, servers, work / name / "guestinfo.json")
    firstboot = Path(sys.executable).parent / "firstboot"
    argv = [str(firstboot), "run", "-v", "--root", str(root), "--source", f"file:{meta}"]
    child_env = {
        **env,
        "SYSTEMCTL_DOUBLE_ROOT": str(root),
        "SYSTEMCTL_DOUBLE_ADDRESS": _address(guest, guests),
        "SYSTEMCTL_DOUBLE_LOG": str(work / name / "systemctl.log"),
        "SYSTEMCTL_DOUBLE_STATE": str(work / name / "systemctl.json"),
        "SYSTEMCTL_DOUBLE_JOURNAL": str(work / name / "k3s-journal.log"),
    }
    log = work / name / "journal.log"
    started = time.monotonic()
    # What the VM holds already (the keys as deploy wrote them; the config as rewritten stays local).
    pushed = json.loads(meta.read_text(encoding="utf-8"))
    with log.open("w", encoding="utf-8") as journal:
        proc = subprocess.Popen(argv, env=child_env, stdout=journal, stderr=subprocess.STDOUT, cwd=work)
        while proc.poll() is None:
            if time.monotonic() - started > RUN_TIMEOUT:
                proc.kill()
            pushed = _carry(guest.vm, meta, pushed)
            time.sleep(PUSH_SECONDS)
    pushed = _carry(guest.vm, meta, pushed)
    status = pushed.get(contract.KEY_STATUS)
    state = json.loads(status)["state"] if status else "no status"
    return Played(name, proc.returncode, state, time.monotonic() - started, log)


def play(session: Session, fleet: Fleet, work: Path, on_done: Callable[[Played], None]) -> list[Played]:
    """Play the first boot of every VM of `fleet` (initialising servers first); statuses go to vSphere."""
    work.mkdir(parents=True, exist_ok=True)
    guests = read_guests(session, fleet)
    first = [g for g in guests if g.joins is None]
    joiners = [g for g in guests if g.joins is not None]
    played = []
    with _world(guests, work) as (servers, env):

        def boot(guest: Guest) -> Played:
            (work / guest.fvm.name).mkdir(exist_ok=True)
            result = _boot(guest, guests, servers, env, work)
            on_done(result)
            return result

        # The initialising servers first (the others join them), then every joiner at once, as clones
        # powered on together boot together.
        played += [boot(g) for g in first]
        with ThreadPoolExecutor(max_workers=max(1, len(joiners))) as pool:
            played += list(pool.map(boot, joiners))
    return played
