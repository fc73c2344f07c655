"""CLI exit codes and output without network: status, run failures, usage, no tracebacks."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures.guestinfo import onboarding_config, write_metadata

from firstboot import cli, statusview
from firstboot.contract import State, Status
from firstboot.state import StateStore


def test_status_before_any_run_is_not_finished(guest_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--root", str(guest_root)]) == 2
    assert "firstboot has not run yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("state", "code"), [(State.DONE, 0), (State.FAILED, 1), (State.RUNNING, 2), (State.PENDING, 2)]
)
def test_status_exit_codes_and_json(
    guest_root: Path, capsys: pytest.CaptureFixture[str], state: State, code: int
) -> None:
    StateStore(guest_root).write_status(Status(state=state, step="dns", message="m", remedy="r"))
    assert cli.main(["status", "--root", str(guest_root), "--format", "json"]) == code
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == state.value and data["step"] == "dns" and data["updated"].endswith("Z")


def test_status_wait_times_out_then_sees_done(guest_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = StateStore(guest_root)
    store.write_status(Status(state=State.RUNNING, step="k3s", message="waiting"))
    started = time.monotonic()
    assert cli.main(["status", "--root", str(guest_root), "--wait", "--timeout", "0.6"]) == 2
    assert 0.5 < time.monotonic() - started < 3
    timer = threading.Timer(0.4, lambda: store.write_status(Status(state=State.DONE, message="onboarded")))
    timer.start()
    assert cli.main(["status", "--root", str(guest_root), "--wait", "--timeout", "10"]) == 0
    assert "state:   done" in capsys.readouterr().out


def test_run_with_invalid_metadata_fails_listing_every_problem(
    guest_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = onboarding_config()
    bad["hostname"] = "Bad_Name"
    bad["time"] = {"ntp_servers": [], "max_offset_seconds": -1}
    meta = write_metadata(tmp_path / "meta.json", bad)
    assert cli.main(["run", "--root", str(guest_root), "--source", f"file:{meta}"]) == 1
    out, err = capsys.readouterr()
    assert "step:    metadata" in out
    for path in ("hostname", "time.ntp_servers", "time.max_offset_seconds"):
        assert path in out
    assert "builder deploy" in out
    assert "Traceback" not in err
    status = json.loads((guest_root / "var/lib/arcbake/status.json").read_text())
    assert status["state"] == "failed" and status["step"] == "metadata"
    # The failure was written back to the file source too (guestinfo.arcbake.status).
    assert json.loads(json.loads(meta.read_text())["guestinfo.arcbake.status"])["state"] == "failed"
    assert not (guest_root / "var/lib/arcbake/instances/vm-1/metadata.done").exists()


def console_run(root: Path, source: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `firstboot run` as the console script runs it (main() with no argv), its
    output block-buffered as under systemd (stdout is the journal's stream socket)."""
    argv = [sys.executable, "-m", "firstboot.cli", "run", "--root", str(root), "--source", source]
    return argv, {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_the_console_run_ends_at_once_with_its_whole_output_and_exit_code(
    guest_root: Path, tmp_path: Path
) -> None:
    """`python -m firstboot.cli run` ends through firstboot.interpreter.exit_at_once (no teardown): what it
    printed to a pipe (block-buffered) and logged must all be there, with the run's exit code."""
    bad = onboarding_config()
    bad["hostname"] = "Bad_Name"
    meta = write_metadata(tmp_path / "meta.json", bad)
    argv, env = console_run(guest_root, f"file:{meta}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "state:   failed" in proc.stdout and "step:    metadata" in proc.stdout
    # Every line of the status it printed, as the status it wrote reads.
    written = json.loads((guest_root / "var/lib/arcbake/status.json").read_text())
    assert proc.stdout == statusview.text(written) + "\n"
    assert "ERROR firstboot.engine: failed [metadata]" in proc.stderr and "Traceback" not in proc.stderr


def test_the_console_run_keeps_its_exit_code_when_its_reader_is_gone(guest_root: Path) -> None:
    """`firstboot run | head`: stdout's reader closed before the status is printed. The run's exit code
    stands (not the interpreter's 120 for a failed flush) and no traceback reaches the journal."""
    argv, env = console_run(guest_root, "file:/nonexistent")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1
    assert "metadata file not found" in err and "Traceback" not in err and "BrokenPipe" not in err


def test_run_with_missing_source_file(guest_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--root", str(guest_root), "--source", "file:/nonexistent/meta.yaml"]) == 1
    assert gc.isenabled()  # the run held collection during its start-up and gave it back, step modules or not
    out = capsys.readouterr().out
    assert "metadata file not found" in out and "state:   failed" in out


def test_usage_errors_exit_2(guest_root: Path) -> None:
    for argv in (["run", "--only", "nope"], ["status", "--format", "xml"], ["bogus"]):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--root", str(guest_root)])
        assert info.value.code == 2


def test_cli_does_not_import_builder_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys, firstboot.cli, firstboot.engine, firstboot.doctor, firstboot.steps as s; s.load();"
        "bad = [m for m in ('click', 'rich', 'jinja2', 'pyVmomi', 'builder') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""


def test_doctor_with_invalid_metadata_reports_and_writes_nothing(
    guest_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from firstboot import steps

    bad = onboarding_config()
    bad["arc"]["location"] = "West Europe"
    meta = write_metadata(tmp_path / "meta.json", bad, secrets={"k3s_token": "tok-abcdef"})
    before = meta.read_text()
    only_local = steps.load(["metadata", "hostname", "resources"])
    monkeypatch.setattr("firstboot.doctor.steps.load", lambda *a: only_local)
    code = cli.main(["doctor", "--root", str(guest_root), "--source", f"file:{meta}", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["healthy"] is False
    checks = {c["step"]: c for c in report["checks"]}
    assert not checks["metadata"]["ok"] and "arc.location" in checks["metadata"]["message"]
    assert checks["hostname"]["conclusive"] is False
    assert checks["hostname"]["message"].startswith("not checked")
    # Read-only: the metadata file (secrets included) and the root are untouched.
    assert meta.read_text() == before
    assert list(guest_root.iterdir()) == []


@pytest.mark.allow_subp("vmware-rpctool")
def test_run_through_guestinfo_redacts_and_reports_status(
    guest_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--source auto` with a vmware-rpctool stand-in: secrets redacted with info-set, status pushed."""
    import os

    from fixtures.guestinfo import fake_rpctool

    secrets = {"sp_secret": "rpc-secret-4471"}
    meta = write_metadata(tmp_path / "seed.json", onboarding_config(), secrets=secrets)
    store = tmp_path / "guestinfo.json"
    store.write_text(meta.read_text())
    monkeypatch.setenv("PATH", f"{fake_rpctool(tmp_path / 'bin', store)}:{os.environ['PATH']}")
    assert cli.main(["run", "--root", str(guest_root), "--only", "hostname"]) == 0
    keys = json.loads(store.read_text())
    assert keys["guestinfo.arcbake.secrets"] == "---"
    assert keys["guestinfo.arcbake.secrets.encoding"] == " "
    assert json.loads(keys["guestinfo.arcbake.status"])["state"] == "pending"
    calls = [json.loads(line)[0] for line in (tmp_path / "guestinfo.json.log").read_text().splitlines()]
    assert any(c.startswith("info-set guestinfo.arcbake.status ") for c in calls)
    assert not any("rpc-secret-4471" in c for c in calls)
    assert (guest_root / "etc/hostname").read_text() == "node1\n"


def test_doctor_names_missing_secrets(guest_root: Path, tmp_path: Path) -> None:
    from firstboot import doctor, steps
    from firstboot.engine import build_context
    from firstboot.sources import FileSource

    meta = write_metadata(tmp_path / "meta.json", onboarding_config(), secrets=None)
    findings = doctor.diagnose(build_context(guest_root, FileSource(meta)), steps.load(["metadata"]))
    assert not findings[0].result.ok
    assert "sp_secret: required by arc.auth=secret" in findings[0].result.message
