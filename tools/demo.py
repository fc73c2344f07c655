"""The demo (`bash tools/dev.sh demo`): bake a template on the bundled vCenter simulator, deploy a
three-node fleet from it, show what each clone received, play each clone's first boot on this machine
(tools/demo_guests.py) with its status carried into vSphere, then `builder status` (every VM done, with
its timings) and `builder report` (one HTML page; the demo prints where it is).

Runs the real `builder` commands as a user would, against `.bin/vcsim` on loopback with a user and a
random password; the fleet's secrets are fake values set in this process's environment only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
VCSIM = REPO / ".bin" / "vcsim"
BUILDER = shutil.which("builder") or str(Path(sys.executable).parent / "builder")
IMAGE = "examples/demo-image.yaml"
FLEET = "examples/demo-fleet.yaml"
BUILD_DIR = "build/demo-image"
REPORT = "build/demo-report.html"
GUESTS_DIR = "build/demo-guests"
COLOR = "NO_COLOR" not in os.environ and sys.stdout.isatty()


def say(text: str) -> None:
    """A section heading."""
    bold = ("\x1b[1m", "\x1b[0m") if COLOR else ("", "")
    print(f"\n{bold[0]}== {text}{bold[1]}", flush=True)


def note(text: str) -> None:
    """An explanatory paragraph."""
    print(textwrap.fill(text, width=100, initial_indent="   ", subsequent_indent="   "), flush=True)


def run(*args: str, env: dict[str, str]) -> int:
    """Run a builder command, echoing it first; output goes straight to the terminal."""
    print(f"\n$ builder {' '.join(args)}", flush=True)
    return subprocess.run([BUILDER, *args], env=env, cwd=REPO, check=False).returncode


def start_simulator(password: str) -> tuple[subprocess.Popen[str], str]:
    """Start .bin/vcsim on a free loopback port; return the process and its host:port."""
    if not os.access(VCSIM, os.X_OK):
        sys.exit(f"{VCSIM} is missing: run `bash tools/dev.sh setup` first")
    proc = subprocess.Popen(
        [str(VCSIM), "-l", "127.0.0.1:0", "-username", "demo@vsphere.local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "VCSIM_PASSWORD": password},
    )
    url = ""
    for line in proc.stdout or []:
        if line.startswith("https://"):
            url = line.strip()
        if line.strip() == "vcsim ready":
            break
    if not url:
        proc.kill()
        sys.exit("the vCenter simulator did not start")
    return proc, url.removeprefix("https://").removesuffix("/sdk")


def mask(value: Any) -> Any:
    """Secrets shown as their length only."""
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    if isinstance(value, str) and value:
        return f"******** ({len(value)} characters)"
    return value


def show_clones(env: dict[str, str]) -> None:
    """Decode and print the guestinfo each clone of the demo fleet holds, secrets masked."""
    from builder.fleet import load_fleet
    from builder.vsphere import inventory
    from builder.vsphere import vm as vmops
    from builder.vsphere.connection import Credentials, connect
    from firstboot import contract
    from firstboot.encoding import decode

    fleet = load_fleet(REPO / FLEET)
    shown_userdata = ""
    with connect(Credentials.from_env(env)) as session:
        dc = inventory.datacenter(session, fleet.placement.datacenter)
        for fvm in fleet.vms:
            vm = inventory.vm(session, dc, fvm.name)
            extra = vmops.extra_config(vm)

            def payload(key: str, extra: dict[str, str] = extra) -> str:
                return decode(extra[key], extra.get(key + contract.ENCODING_SUFFIX)).decode()

            metadata = json.loads(payload(contract.KEY_METADATA))
            config = json.loads(payload(contract.KEY_CONFIG))
            secret_data = json.loads(payload(contract.KEY_SECRETS))
            print(f"\n-- {fvm.name}  ({vm._moId}, {vm.runtime.powerState}, K3s {fvm.role.value})")
            print("   guestinfo.metadata (cloud-init meta-data):")
            print("     " + json.dumps(metadata))
            userdata = payload(contract.KEY_USERDATA).rstrip()
            if userdata != shown_userdata:
                print("   guestinfo.userdata (cloud-config):")
                print(textwrap.indent(userdata, "     "))
                shown_userdata = userdata
            else:
                print("   guestinfo.userdata: the same cloud-config with its own hostname")
            print("   guestinfo.arcbake.config (for firstboot; trimmed to what differs between clones):")
            brief = {"hostname": config["hostname"], "k3s": {"role": config["k3s"]["role"]}}
            if config["k3s"].get("server_url"):
                brief["k3s"]["server_url"] = config["k3s"]["server_url"]
            if config.get("arc"):
                arc = config["arc"]
                brief["arc"] = {k: arc[k] for k in ("cluster_name", "resource_group", "location", "tags")}
                brief["flux"] = [c["name"] + " <- " + c["url"] for c in config["flux"]["configurations"]]
            print(textwrap.indent(yaml.safe_dump(brief, sort_keys=False).rstrip(), "     "))
            print(
                "   guestinfo.arcbake.secrets (masked here; firstboot overwrites the key with --- once read):"
            )
            print(textwrap.indent(yaml.safe_dump(mask(secret_data), sort_keys=False).rstrip(), "     "))


def play_guests(env: dict[str, str]) -> bool:
    """Play every clone's first boot (tools/demo_guests.py); one line per clone."""
    import demo_guests

    from builder.fleet import load_fleet
    from builder.vsphere.connection import Credentials, connect

    def done(result: demo_guests.Played) -> None:
        print(
            f"   {result.name}: firstboot run exit {result.exit_code}, {result.state} in "
            f"{result.seconds:.1f}s (journal: {result.log.relative_to(REPO)})",
            flush=True,
        )

    fleet = load_fleet(REPO / FLEET)
    work = REPO / GUESTS_DIR
    shutil.rmtree(work, ignore_errors=True)
    with connect(Credentials.from_env(env)) as session:
        played = demo_guests.play(session, fleet, work, done)
    failed = [p for p in played if p.exit_code != 0]
    for result in failed:
        print(f"\n-- last lines of {result.name}'s journal:", flush=True)
        print(textwrap.indent("\n".join(result.log.read_text().splitlines()[-15:]), "   "), flush=True)
    return not failed


def main() -> int:
    """Run the demo; return the exit code."""
    os.chdir(REPO)
    password = "demo-" + secrets.token_urlsafe(12)
    say("1. Start the bundled vCenter simulator (govmomi vcsim, loopback, user + password)")
    proc, server = start_simulator(password)
    try:
        env = {
            **os.environ,
            "VSPHERE_SERVER": server,
            "VSPHERE_USER": "demo@vsphere.local",
            "VSPHERE_PASSWORD": password,
            "VSPHERE_INSECURE": "1",
            # Fake secrets the fleet file references by name ({env: ...}); never written to a file.
            "ARC_SP_SECRET": "fake-sp-secret-" + secrets.token_hex(8),
            "K3S_TOKEN": "fake-k3s-token-" + secrets.token_hex(8),
        }
        note(
            f"vCenter simulator at https://{server}/sdk (inventory: datacenter DC0, cluster DC0_C0, "
            "datastore LocalDS_0, network 'VM Network', VM DC0_H0_VM0). The credentials are in "
            "VSPHERE_SERVER, VSPHERE_USER, VSPHERE_PASSWORD (VSPHERE_INSECURE=1: self-signed certificate)."
        )

        say(f"2. Bake the template: render {IMAGE}, validate, Packer vsphere-clone, publish")
        note(
            "The demo spec uses communicator 'none' (the simulator runs no guest OS), so Packer clones "
            "DC0_H0_VM0, sets the template's configuration parameters and converts it to a template."
        )
        started = time.monotonic()
        if run("build", IMAGE, "-o", BUILD_DIR, env=env) != 0:
            return 1
        note(f"built in {time.monotonic() - started:.1f}s; manifest: {BUILD_DIR}/manifest.json")

        say(f"3. Deploy the fleet {FLEET}: one K3s server and two agents")
        if run("deploy", FLEET, env=env) != 0:
            return 1
        note("Deploy is idempotent: running it again reports every VM unchanged.")
        if run("deploy", FLEET, env=env) != 0:
            return 1

        say("4. What each clone received in its guestinfo (decoded gzip+base64)")
        show_clones(env)

        say("5. Onboarding status, read from each VM's guestinfo.arcbake.status")
        run("status", FLEET, env=env)
        note(
            "No guest has reported yet: the simulator runs no guest OS (and `builder status --wait` says so "
            "at once rather than poll). So the demo plays the guests next."
        )

        say("6. Play each clone's first boot on this machine, its status carried into vSphere")
        note(
            "For every VM, `firstboot run` runs in its own --root with the guestinfo deploy wrote into that "
            "VM (read back through the vSphere API), its time, DNS and proxy pointed at loopback servers "
            "(chronyd, dnsmasq, a TLS server behind a CONNECT proxy), and K3s, Arc and Flux played by the "
            "doubles of tests/doubles. Its status.json goes into the VM's guestinfo.arcbake.status through "
            "the vSphere API while it runs, as vmware-rpctool info-set does inside a real clone."
        )
        if not play_guests(env):
            return 1

        say("7. Onboarding status again: every VM done, with its timings")
        if run("status", FLEET, "--wait", "--timeout", "60", "--interval", "1", env=env) != 0:
            return 1

        say("8. Where the time went: one self-contained HTML page")
        if run("report", FLEET, "-o", REPORT, env=env) != 0:
            return 1
        note(f"Open it in a browser: file://{REPO / REPORT}")
    finally:
        say("9. Stop the simulator")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        print("   stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
