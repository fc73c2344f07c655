"""The preflight chain end to end (metadata .. resources) against real NTP, DNS, TLS and proxy on loopback,
in-process through the engine and as the `firstboot` program (run --only, status, doctor)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from fixtures.firstboot_plugin import PreflightWorld
from fixtures.guestinfo import write_metadata
from fixtures.ntp import SilentUdp

from firstboot import doctor, steps
from firstboot.contract import State
from firstboot.engine import Engine, build_context
from firstboot.sources import FileSource

pytestmark = pytest.mark.integration

PREFLIGHT = steps.ORDER[:7]
SECRET = "planted-secret-Zx81-never-log"


def firstboot_bin() -> str:
    here = Path(__file__).resolve().parents[2] / ".venv/bin/firstboot"
    return str(here) if here.exists() else "firstboot"


@pytest.mark.allow_subp(all=True)
def test_preflight_reaches_done_and_keeps_secrets_out(
    preflight_world: PreflightWorld, guest_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = preflight_world.prepare_root(guest_root)
    meta = write_metadata(tmp_path / "meta.json", preflight_world.config, secrets={"sp_secret": SECRET})
    caplog.set_level("DEBUG")
    ctx = build_context(root, FileSource(meta))
    result = Engine(ctx, steps.load(PREFLIGHT)).run()
    assert result.ok, result.status
    assert result.status.state is State.DONE
    stamps = sorted(p.name for p in (root / "var/lib/arcbake/instances/vm-1").glob("*.done"))
    assert stamps == sorted(f"{name}.done" for name in PREFLIGHT)
    assert (root / "var/lib/arcbake/done").read_text().strip() == "vm-1"
    assert (root / "etc/hostname").read_text() == "node1\n"
    assert (root / "etc/chrony.d/arcbake.sources").exists()
    assert preflight_world.proxy.url in (root / "etc/systemd/system/k3s.service.env").read_text()
    assert len(preflight_world.proxy.requests) >= 14
    # The secret reached no log, status or guestinfo; its 0600 file kept it while onboarding ran and
    # was stripped to the generation once the run was done.
    keys = json.loads(meta.read_text())
    assert keys["guestinfo.arcbake.secrets"] == "---"
    assert json.loads(keys["guestinfo.arcbake.status"])["state"] == "done"
    assert SECRET not in caplog.text
    holders = [p for p in root.rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")]
    assert holders == []
    held = json.loads((root / "var/lib/arcbake/instances/vm-1/secrets.json").read_text())
    assert held["retired"] == ["sp_secret"] and held["secrets"]["generation"] == 1
    assert result.status.generation == 1
    assert SECRET not in meta.read_text()


@pytest.mark.fault("NTP server silent during a run", "run fails at time, servers named; proxy not run")
def test_run_stops_at_the_broken_link(
    preflight_world: PreflightWorld, guest_root: Path, tmp_path: Path, silent_udp: SilentUdp
) -> None:
    root = preflight_world.prepare_root(guest_root)
    config = preflight_world.config | {"time": {"ntp_servers": ["127.0.0.1"], "ntp_port": silent_udp.port}}
    meta = write_metadata(tmp_path / "meta.json", config, secrets={"sp_secret": SECRET})
    ctx = build_context(root, FileSource(meta), time_scale=0.01)
    started = time.monotonic()
    result = Engine(ctx, steps.load(PREFLIGHT)).run()
    assert time.monotonic() - started < 15
    assert not result.ok and result.status.step == "time"
    assert f"127.0.0.1:{silent_udp.port}" in result.status.message
    assert result.status.remedy and "UDP port" in result.status.remedy
    stamped = {p.name for p in (root / "var/lib/arcbake/instances/vm-1").glob("*.done")}
    assert stamped == {"metadata.done", "hostname.done", "dns.done"}


@pytest.mark.slow
@pytest.mark.allow_subp(all=True)
def test_cli_run_only_status_and_doctor(
    preflight_world: PreflightWorld, guest_root: Path, tmp_path: Path
) -> None:
    root = preflight_world.prepare_root(guest_root)
    meta = write_metadata(tmp_path / "meta.json", preflight_world.config, secrets={"sp_secret": SECRET})
    env = {**os.environ, **preflight_world.env}
    base = ["--root", str(root)]
    for step in ("hostname", "proxy", "connectivity"):
        proc = subprocess.run(
            [firstboot_bin(), "run", *base, "--source", f"file:{meta}", "--only", step],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert SECRET not in proc.stdout + proc.stderr
    status = subprocess.run(
        [firstboot_bin(), "status", *base, "--format", "json"], capture_output=True, text=True
    )
    # k3s/arc/flux are not done: not finished.
    assert status.returncode == 2 and json.loads(status.stdout)["state"] == "pending"

    started = time.monotonic()
    doc = subprocess.run(
        [firstboot_bin(), "doctor", *base, "--source", f"file:{meta}", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started < 30
    report = json.loads(doc.stdout)
    by_step = {c["step"]: c for c in report["checks"]}
    for step in PREFLIGHT:
        assert by_step[step]["ok"], by_step[step]
    assert doc.returncode == (0 if report["healthy"] else 1)
    assert report["healthy"] == all(c["ok"] for c in report["checks"])


@pytest.mark.fault("DNS server stopped, doctor run", "doctor prints PROBLEM dns with a remedy, exit 1")
def test_doctor_text_names_the_broken_link(
    preflight_world: PreflightWorld, guest_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from firstboot import cli

    root = preflight_world.prepare_root(guest_root)
    meta = write_metadata(tmp_path / "meta.json", preflight_world.config, secrets={"sp_secret": SECRET})
    preflight_world.dns.stop()
    started = time.monotonic()
    findings = doctor.diagnose(build_context(root, FileSource(meta)), steps.load(PREFLIGHT))
    assert time.monotonic() - started < 10
    by_step = {f.step: f.result for f in findings}
    assert by_step["time"].ok and by_step["resources"].ok
    assert not by_step["dns"].ok and "nothing resolves" in by_step["dns"].message
    # The proxy resolves the Azure names itself: through it the endpoints stay reachable.
    assert by_step["connectivity"].ok
    code = cli.main(["doctor", "--root", str(root), "--source", f"file:{meta}"])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    dns_line = next(i for i, line in enumerate(lines) if line.split()[1:2] == ["dns"])
    assert lines[dns_line].startswith("PROBLEM")
    assert "remedy:" in lines[dns_line + 1] and "port 53" in lines[dns_line + 1]
    assert any(line.startswith("ok") and line.split()[1] == "time" for line in lines)
