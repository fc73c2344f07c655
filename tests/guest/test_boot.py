"""firstboot as a systemd unit in a booted Debian 12 guest (systemd-nspawn -b), across reboots and kills.

Each test boots a fresh overlay of the provisioned guest (conftest.py); the guest powers itself off once
arcbake-firstboot.service has finished, failed or been skipped (arcbake-test-poweroff.service).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest
from fixtures.ntp import NtpHandle

from firstboot import azcli
from firstboot.contract import OnboardingConfig
from firstboot.endpoints import endpoints
from firstboot.steporder import ORDER
from guest import provision
from guest.conftest import SECRET, GuestWorld, kube_scenario

# 900 s: the first test also builds the cached guest root (debootstrap) and the arcbake layer.
pytestmark = [pytest.mark.boot, pytest.mark.slow, pytest.mark.timeout(900)]

ALL_STEPS = list(ORDER)
FLUX = {
    "configurations": [
        {
            "name": "cluster-config",
            "url": "https://git.example.test/edge/fleet.git",
            "kustomizations": [{"name": "infra", "path": "./infrastructure"}],
        }
    ]
}


def _running_steps(statuses: list[dict[str, object]]) -> list[str]:
    steps: list[str] = []
    for status in statuses:
        step = status.get("step")
        if status.get("state") == "running" and isinstance(step, str) and step not in steps:
            steps.append(step)
    return steps


def _no_secret_anywhere(world: GuestWorld) -> None:
    assert SECRET not in world.guest.journal("-o", "cat")
    for log in (provision.RPCTOOL_LOG, provision.AZ_LOG, provision.GUESTINFO):
        path = world.guest.path(log)
        assert not path.exists() or SECRET not in path.read_text(), log


@pytest.mark.fault("second boot after onboarding", "unit skipped by its stamp; status still done")
def test_first_boot_reaches_done_and_second_boot_does_not_rerun(guest_world: GuestWorld) -> None:
    guest_world.config["flux"] = FLUX
    guest_world.prepare()
    first = guest_world.boot()
    statuses = guest_world.statuses()
    assert statuses, first.console[-3000:]
    journal = guest_world.unit_journal()
    assert statuses[-1]["state"] == "done", (statuses[-1], journal[-3000:])
    # guestinfo.arcbake.status went out at each step, in order.
    assert _running_steps(statuses) == ALL_STEPS
    # Each step's lines are in the journal under the unit's SyslogIdentifier.
    for step in ALL_STEPS:
        assert f"step {step}: ok" in journal, step
    info = provision.guestinfo(guest_world.guest)
    assert info["guestinfo.arcbake.secrets"] == "---"
    assert json.loads(info["guestinfo.arcbake.status"])["state"] == "done"
    (secrets,) = guest_world.guest.path("/var/lib/arcbake/instances").glob("*/secrets.json")
    assert secrets.stat().st_mode & 0o777 == 0o600
    # Onboarding done: the file keeps the generation, no value.
    assert SECRET not in secrets.read_text() and json.loads(secrets.read_text())["secrets"]["generation"] == 1
    kubeconfig = guest_world.guest.path("/etc/rancher/k3s/k3s.yaml")
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert guest_world.stamped() == set(ALL_STEPS)
    assert len(guest_world.az_calls("connectedk8s", "connect")) == 1
    flux_puts = [
        r
        for r in guest_world.arm.requests(arm_only=True)
        if r.method == "PUT" and "/fluxConfigurations/" in r.path
    ]
    assert len(flux_puts) == 1
    # az ran three times (sign-in, connect, sign-out); Resource Manager's work went through the SDK.
    assert [argv[:2] for argv in guest_world.az_calls()] == [
        ["login", "--service-principal"],
        ["connectedk8s", "connect"],
        ["logout", "--username"],
    ]
    # Nothing downloaded: every CONNECT through the proxy went to a documented Azure endpoint, and az got
    # the image's helm and kubectl.
    config = OnboardingConfig.model_validate(guest_world.config)
    documented = {f"{e.host}:{e.port}" for e in endpoints(config, environ={})}
    seen = guest_world.preflight.proxy.requests
    assert seen and set(seen) <= documented, sorted(set(seen) - documented)
    connect_env = [e["env"] for e in provision.read_jsonl(guest_world.guest, provision.AZ_LOG)][-1]
    assert connect_env["HELM_CLIENT_PATH"] == "/usr/local/bin/helm"
    assert connect_env["KUBECTL_CLIENT_PATH"] == "/usr/local/bin/kubectl"
    _no_secret_anywhere(guest_world)

    rpc_calls = len(provision.read_jsonl(guest_world.guest, provision.RPCTOOL_LOG))
    guest_world.prepare(guestinfo=False)
    guest_world.boot()
    # The stamp kept the unit from running: systemd skipped it, nothing new went to guestinfo or az.
    skipped = guest_world.guest.journal("-u", provision.UNIT, "-o", "cat")
    assert "ConditionPathExists=!/var/lib/arcbake/done" in skipped
    assert journal.count("starting (instance") == guest_world.unit_journal().count("starting (instance") == 1
    assert len(provision.read_jsonl(guest_world.guest, provision.RPCTOOL_LOG)) == rpc_calls
    assert len(guest_world.az_calls("connectedk8s", "connect")) == 1
    status = guest_world.guest.run("/opt/arcbake/bin/firstboot", "status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "done" in status.stdout


@pytest.mark.fault(
    "guest powered off (SIGKILL of its init) while the arc step waits for the Arc agents",
    "next boot resumes at arc; az connectedk8s connect ran once in all",
)
def test_killed_during_arc_resumes_at_arc(guest_world: GuestWorld) -> None:
    # The agents never get Ready in the first boot: the arc step is still waiting when the power goes.
    guest_world.az_config = {"arc_pods": [{"name": "config-agent-7b5c", "ready_after": None}]}
    guest_world.prepare()

    def connected_and_waiting() -> bool:
        state = guest_world.guest.path(provision.AZ_STATE)
        if not state.exists():
            return False
        try:
            clusters = json.loads(state.read_text()).get("clusters", {})
        except json.JSONDecodeError:
            return False
        if not any(c.get("provisioningState") == "Succeeded" for c in clusters.values()):
            return False
        # And signed out (az's credential files gone): the sign-out runs beside the agents' wait, and a kill
        # inside it would make the next boot sign out again (right, but a fourth az call to count).
        config_dir = guest_world.guest.path(azcli.AZ_CONFIG_DIR)
        return not [p for store in azcli.CREDENTIAL_STORES for p in config_dir.glob(f"{store}*")]

    first = guest_world.boot(kill_when=connected_and_waiting)
    assert first.killed, first.console[-2000:]
    assert "arc" not in guest_world.stamped() and "k3s" in guest_world.stamped()
    before = len(guest_world.statuses())

    # K3s keeps what it runs across a reboot; the API double does not, so the scenario carries the
    # azure-arc agents over (Ready now).
    guest_world.az_config = {}
    guest_world.scenario = kube_scenario(arc_pods_ready=True)
    guest_world.prepare(guestinfo=False)
    guest_world.boot()
    resumed = guest_world.statuses()[before:]
    assert resumed[-1]["state"] == "done", (resumed[-1], guest_world.unit_journal()[-3000:])
    # metadata runs on every start (it loads the config); of the stamped steps none ran again.
    assert _running_steps(resumed) == ["metadata", "arc", "flux"]
    assert len(guest_world.az_calls("connectedk8s", "connect")) == 1
    # The resumed arc step read the connected cluster through Resource Manager and started no az.
    assert len(guest_world.az_calls()) == 3  # the first boot's sign-in, connect and sign-out
    assert guest_world.stamped() == set(ALL_STEPS)


@pytest.fixture
def dead_resolver(guest_world: GuestWorld) -> Iterator[str]:
    """A DNS server that never answers: 127.0.0.2 on the port the guest's resolver uses."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", guest_world.preflight.dns.port))
    yield "127.0.0.2"
    sock.close()


@pytest.mark.fault(
    "VM DNS forwarding broken (resolv.conf -> a server that never answers; upstreams healthy)",
    "dns step applies the fix (resolv.conf -> upstreams) and onboarding completes",
)
def test_broken_dns_forwarding_is_fixed(guest_world: GuestWorld, dead_resolver: str) -> None:
    guest_world.resolv_conf = f"nameserver {dead_resolver}\n"
    guest_world.prepare()
    guest_world.boot()
    statuses = guest_world.statuses()
    journal = guest_world.unit_journal()
    assert statuses[-1]["state"] == "done", (statuses[-1], journal[-3000:])
    resolv = guest_world.guest.path("/etc/resolv.conf").read_text()
    assert "nameserver 127.0.0.1" in resolv and dead_resolver not in resolv
    assert "DNS fix applied" in journal
    assert guest_world.guest.path("/etc/NetworkManager/conf.d").is_dir()


@pytest.mark.fault(
    "time source 120 s ahead (chronyd under libfaketime)",
    "fails at time with the remedy in status and journal; nothing after time runs",
)
def test_skewed_time_fails_at_time(guest_world: GuestWorld, start_ntp: Callable[..., NtpHandle]) -> None:
    skewed = start_ntp(skew_seconds=120)
    guest_world.config["time"] = guest_world.config["time"] | {
        "ntp_port": skewed.port,
        "sync_timeout_seconds": 2,
    }
    # The time step retries for up to 240 s; scale its policy down so the boot ends in seconds.
    guest_world.unit_env = {"ARCBAKE_TIME_SCALE": "0.03"}
    guest_world.prepare()
    guest_world.boot()
    last = guest_world.statuses()[-1]
    journal = guest_world.unit_journal()
    assert last["state"] == "failed" and last["step"] == "time", (last, journal[-3000:])
    assert "the clock is off by +1" in last["message"], last
    assert last["remedy"] and "makestep" in last["remedy"], last
    assert last["remedy"] in journal
    assert guest_world.stamped() == {"metadata", "hostname", "dns"}
    assert _running_steps(guest_world.statuses()) == ["metadata", "hostname", "dns", "time"]
    assert not guest_world.guest.path("/etc/rancher/k3s/k3s.yaml").exists()
    assert guest_world.az_calls() == []


@pytest.mark.fault(
    "invalid guestinfo.arcbake.config (bad hostname, no NTP servers, unknown key, bad location)",
    "fails at metadata listing every problem; nothing after metadata runs",
)
def test_invalid_metadata_fails_at_metadata(guest_world: GuestWorld) -> None:
    guest_world.config["hostname"] = "Not_A_Hostname!"
    guest_world.config["time"] = {"ntp_servers": []}
    guest_world.config["bogus"] = True
    guest_world.config["arc"] = guest_world.config["arc"] | {"location": "West Europe"}
    guest_world.prepare()
    guest_world.boot()
    last = guest_world.statuses()[-1]
    journal = guest_world.unit_journal()
    assert last["state"] == "failed" and last["step"] == "metadata", (last, journal[-3000:])
    for path in ("hostname", "time.ntp_servers", "bogus", "arc.location"):
        assert path in last["message"], (path, last["message"])
        assert path in journal, path
    assert guest_world.stamped() == set()
    assert _running_steps(guest_world.statuses()) == ["metadata"]
    assert not guest_world.guest.path("/etc/chrony.d/arcbake.sources").exists()
    assert "node1" not in guest_world.guest.path("/etc/hostname").read_text()
    assert guest_world.az_calls() == []
