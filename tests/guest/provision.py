"""Installing arcbake into the test guest the way the image does, plus the in-guest doubles.

`install_arcbake(guest, build_dir, wheelhouse)` (once per session, into a shared layer):
- the wheelhouse goes to `/tmp/arcbake-wheelhouse` and the build dir's own
  `scripts/30-install-firstboot.sh` runs inside the guest (`systemd-nspawn ... /bin/bash`), creating the
  `/opt/arcbake` venv exactly as Packer's provisioner does on EL;
- the build dir's `rootfs/` files that make sense on Debian are copied to the same paths (ROOTFS_SKIPPED
  says which are not, and why);
- the build dir's `scripts/40-enable-units.sh` runs inside the guest (it enables chrony and the unit).

The doubles (also in the shared layer):
- `/usr/bin/vmware-rpctool`: serves guestinfo from /var/lib/arcbake-test/guestinfo.json and appends every
  call (`info-get` and `info-set`, with the time) to /var/lib/arcbake-test/rpctool.jsonl;
- `/usr/local/bin/az`: tests/doubles' az double (state, log and config under /var/lib/arcbake-test); it puts
  the connected cluster into the ARM double the test runs on the host's loopback (firstboot's Azure SDK
  talks to that double through ARCBAKE_ARM_ENDPOINT / ARCBAKE_AZURE_AUTHORITY, set in the unit's drop-in);
- `/usr/local/bin/helm` and `/usr/local/bin/kubectl`: stand-ins for the image's pinned helm
  (20-install-azure-cli.sh, not run in the Debian guest) and K3s's kubectl link, which firstboot requires
  and hands to `az connectedk8s connect` (HELM_CLIENT_PATH / KUBECTL_CLIENT_PATH);
- `k3s.service`: tests/doubles' Kubernetes API double on a loopback port, writing
  /etc/rancher/k3s/k3s.yaml 0600 as K3s does; not enabled (firstboot's k3s step enables and starts it);
- chronyd runs in the guest on the image's /etc/chrony.conf with `-x` (never touches the host clock;
  Debian's unit otherwise skips itself in a container without CAP_SYS_TIME);
- `arcbake-test-poweroff.service`: ordered after arcbake-firstboot.service, powers the guest off, so a
  boot ends by itself once the unit has finished (or failed, or was skipped by its stamp).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from guest.guestroot import Guest

REPO = Path(__file__).resolve().parents[2]
DOUBLES = REPO / "tests" / "doubles"
TEST_DIR = "/var/lib/arcbake-test"
CONF_DIR = "/etc/arcbake-test"
GUESTINFO = f"{TEST_DIR}/guestinfo.json"
RPCTOOL_LOG = f"{TEST_DIR}/rpctool.jsonl"
AZ_STATE = f"{TEST_DIR}/az-state.json"
AZ_LOG = f"{TEST_DIR}/az.jsonl"
AZ_CONFIG = f"{CONF_DIR}/az.yaml"
KUBE_SCENARIO = f"{CONF_DIR}/kube-scenario.yaml"
KUBE_PORT_FILE = f"{CONF_DIR}/kube-port"
CA_FILE = f"{CONF_DIR}/ca.pem"
UNIT = "arcbake-firstboot.service"

# rootfs files of the build dir NOT installed in the Debian guest, with the reason.
ROOTFS_SKIPPED = {
    "etc/resolv.conf": "each test writes the guest's resolver (loopback dnsmasq, or a dead one)",
    "etc/firewalld/zones/public.xml": "no firewalld in the guest (EL-only; checked by firewall-offline-cmd)",
    "etc/firewalld/zones/trusted.xml": "no firewalld in the guest (EL-only; checked by firewall-offline-cmd)",
}

RPCTOOL = r'''#!/usr/bin/python3
"""vmware-rpctool double: guestinfo from a JSON file; every call logged as a JSON line."""
import fcntl, json, os, sys, time

STORE = "%(store)s"
LOG = "%(log)s"


def main():
    if len(sys.argv) != 2:
        print("Usage: vmware-rpctool <command>", file=sys.stderr)
        return 1
    verb, _, rest = sys.argv[1].partition(" ")
    with open(STORE + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(STORE) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            data = {}
        entry = {"time": time.time(), "verb": verb}
        if verb == "info-get":
            key = rest.strip()
            entry["key"] = key
            code = 0 if key in data else 1
        elif verb == "info-set":
            key, _, value = rest.partition(" ")
            entry.update(key=key, value=value)
            data[key] = value
            tmp = STORE + ".tmp"
            with open(tmp, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(tmp, STORE)
            code = 0
        else:
            print("Unknown command", file=sys.stderr)
            return 1
        with open(LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
    if verb == "info-get":
        if code:
            print("No value found", file=sys.stderr)
            return 1
        sys.stdout.write(data[key])
    return 0


sys.exit(main())
'''

AZ_WRAPPER = """#!/bin/sh
# az double (tests/doubles/az_double.py) on the arcbake venv's Python, which has PyYAML.
exec /opt/arcbake/bin/python /opt/arcbake-test/doubles/az "$@"
"""

K3S_UNIT = f"""[Unit]
Description=k3s double: the Kubernetes API double on loopback, kubeconfig 0600 like K3s
After=network-online.target

[Service]
Type=simple
ExecStartPre=/bin/rm -f /etc/rancher/k3s/k3s.yaml
ExecStart=/bin/sh -c 'exec /opt/arcbake/bin/python /opt/arcbake-test/doubles/kube_api.py \\
  --port "$(cat {KUBE_PORT_FILE})" --scenario {KUBE_SCENARIO} --kubeconfig /etc/rancher/k3s/k3s.yaml'
KillMode=process

[Install]
WantedBy=multi-user.target
"""

CHRONY_DROPIN = """# Test guest: chronyd on the image's /etc/chrony.conf, never touching the (host's) clock.
[Unit]
ConditionCapability=

[Service]
ExecStart=
ExecStart=!/usr/sbin/chronyd -x -f /etc/chrony.conf
"""

POWEROFF_UNIT = f"""[Unit]
Description=arcbake test guest: power off once arcbake-firstboot has finished
After={UNIT} multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
"""


def install_arcbake(guest: Guest, build_dir: Path, wheelhouse: Path, staging: Path) -> list[str]:
    """Install firstboot from `wheelhouse` with the build dir's scripts and files; return files installed.

    `staging` is a host dir shown as the guest's /tmp while the scripts run (Packer uploads there).
    """
    target = staging / "arcbake-wheelhouse"
    target.mkdir(parents=True, exist_ok=True)
    for wheel in [*wheelhouse.glob("*.whl"), wheelhouse / "requirements.txt"]:
        shutil.copy2(wheel, target / wheel.name)
    for script in ("30-install-firstboot.sh", "40-enable-units.sh"):
        shutil.copy2(build_dir / "scripts" / script, staging / script)
    guest.run("/bin/bash", "/tmp/30-install-firstboot.sh", timeout=600, binds={staging: "/tmp"})
    installed = []
    for src in sorted((build_dir / "rootfs").rglob("*")):
        rel = src.relative_to(build_dir / "rootfs").as_posix()
        if src.is_dir() or rel in ROOTFS_SKIPPED:
            continue
        dest = guest.path("/" + rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        installed.append("/" + rel)
    _install_doubles(guest)
    # 40-enable-units.sh reloads systemd: it runs in the booted guest, as on the VM Packer provisions.
    guest.run_booted("40-enable-units.sh", staging=staging)
    return installed


def _install_doubles(guest: Guest) -> None:
    guest.write("/usr/bin/vmware-rpctool", RPCTOOL % {"store": GUESTINFO, "log": RPCTOOL_LOG}, 0o755)
    dest = guest.path("/opt/arcbake-test/doubles")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("az", "az_double.py", "proc_clock.py", "kube_api.py"):
        shutil.copy2(DOUBLES / name, dest / name)
    # The az double reads the pinned extensions' option tables from data/ beside it.
    shutil.copytree(DOUBLES / "data", dest / "data", dirs_exist_ok=True)
    guest.write("/usr/local/bin/az", AZ_WRAPPER, 0o755)
    for client in ("helm", "kubectl"):
        guest.write(f"/usr/local/bin/{client}", "#!/bin/sh\nexit 0\n", 0o755)
    guest.write("/etc/systemd/system/k3s.service", K3S_UNIT)
    guest.write("/etc/systemd/system/chrony.service.d/50-arcbake-test.conf", CHRONY_DROPIN)
    guest.write("/etc/systemd/system/arcbake-test-poweroff.service", POWEROFF_UNIT)
    wants = guest.path("/etc/systemd/system/multi-user.target.wants")
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "arcbake-test-poweroff.service").symlink_to("/etc/systemd/system/arcbake-test-poweroff.service")
    guest.path(TEST_DIR).mkdir(parents=True, exist_ok=True)


def configure(
    guest: Guest,
    *,
    guestinfo: dict[str, str],
    unit_env: dict[str, str],
    kube_port: int,
    kube_scenario: dict[str, Any],
    az_config: dict[str, Any],
    ca_pem: bytes,
    resolv_conf: str,
) -> None:
    """Per-test wiring: guestinfo, the unit's test environment, the doubles' config, resolver, CA."""
    guest.write(GUESTINFO, json.dumps(guestinfo, indent=1, sort_keys=True), 0o600)
    guest.write(KUBE_PORT_FILE, f"{kube_port}\n")
    guest.write(KUBE_SCENARIO, yaml.safe_dump(kube_scenario))
    guest.write(AZ_CONFIG, yaml.safe_dump(az_config))
    guest.path(CA_FILE).write_bytes(ca_pem)
    env = {
        **unit_env,
        "SSL_CERT_FILE": CA_FILE,
        "AZ_DOUBLE_STATE": AZ_STATE,
        "AZ_DOUBLE_LOG": AZ_LOG,
        "AZ_DOUBLE_CONFIG": AZ_CONFIG,
    }
    lines = "".join(f'Environment="{k}={v}"\n' for k, v in sorted(env.items()))
    guest.write(f"/etc/systemd/system/{UNIT}.d/50-arcbake-test.conf", f"[Service]\n{lines}")
    resolv = guest.path("/etc/resolv.conf")
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    guest.write("/etc/resolv.conf", resolv_conf)


def read_jsonl(guest: Guest, guest_path: str) -> list[dict[str, Any]]:
    """The JSON lines of a log inside the guest ([] when it does not exist yet)."""
    path = guest.path(guest_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status_updates(guest: Guest) -> list[dict[str, Any]]:
    """Every `guestinfo.arcbake.status` value firstboot wrote, decoded, in order."""
    return [
        json.loads(e["value"])
        for e in read_jsonl(guest, RPCTOOL_LOG)
        if e.get("verb") == "info-set" and e.get("key") == "guestinfo.arcbake.status"
    ]


def guestinfo(guest: Guest) -> dict[str, str]:
    """The guestinfo store as firstboot left it."""
    data: dict[str, str] = json.loads(guest.path(GUESTINFO).read_text())
    return data
