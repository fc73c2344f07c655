"""Packer -machine-readable parsing, on lines captured from Packer 1.6.6 against the simulator."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from builder.packer import (
    Collector,
    Event,
    PackerError,
    Progress,
    build,
    child_env,
    escape,
    parse_line,
    redaction_forms,
    unescape,
)

CAPTURED = Path(__file__).parent / "data" / "packer-1.6.6-vsphere-clone.machine-readable"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "1795668660,,ui,say,==> vsphere-clone.c: Cloning VM...",
            Event(1795668660, "", "ui", ("say", "==> vsphere-clone.c: Cloning VM...")),
        ),
        ("1,vsphere-clone.c,artifact-count,2", Event(1, "vsphere-clone.c", "artifact-count", ("2",))),
        ("1,t,artifact,0,id,pk-test-1", Event(1, "t", "artifact", ("0", "id", "pk-test-1"))),
        ("1,,ui,error,a%!(PACKER_COMMA) b", Event(1, "", "ui", ("error", "a, b"))),
        ("1,,ui,say,\\n==> Builds finished", Event(1, "", "ui", ("say", "\n==> Builds finished"))),
        ("1,,ui,say,x\\r\\ny", Event(1, "", "ui", ("say", "x\r\ny"))),
        ("1,,version,1.6.6", Event(1, "", "version", ("1.6.6",))),
        ("plain text line", None),
        ("12,only-two", None),
        ("abc,,ui,say,x", None),
        ("", None),
    ],
)
def test_parse_line(line: str, expected: Event | None) -> None:
    assert parse_line(line) == expected


def test_unescape_order() -> None:
    assert unescape("a%!(PACKER_COMMA)b\\nc") == "a,b\nc"


def test_collect_captured_build() -> None:
    collector = Collector()
    events = [e for e in (parse_line(ln) for ln in CAPTURED.read_text().splitlines()) if e is not None]
    for event in events:
        collector.feed(event)
    out = collector.outcome
    assert [a.index for a in out.artifacts] == [0, 1]
    assert out.artifacts[0].builder_id == "jetbrains.vsphere"
    assert out.artifacts[0].id == "pk-test-1" and out.artifacts[0].string == "pk-test-1"
    assert out.last_step == "vsphere-clone.c: pk-test-1"
    assert out.errors == [
        "Build 'vsphere-clone.c' errored after 1 second: error creating vm: a, b\n  second line"
    ]


def test_progress_prints_steps_with_elapsed_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    buf = io.StringIO()
    progress = Progress(buf)
    for line in CAPTURED.read_text().splitlines()[:3]:
        event = parse_line(line)
        assert event is not None
        progress.show(event)
    progress.show(Event(1, "t", "artifact", ("0", "id", "x")))  # not a ui line: not shown
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[00:00] ==> vsphere-clone.c: Cloning VM..."
    assert len(lines) == 3 and "\x1b[" not in buf.getvalue()


def test_child_env_passes_credentials_only_as_pkr_vars() -> None:
    env = child_env(
        {"PATH": "/bin", "VSPHERE_PASSWORD": "pw-123", "PKR_VAR_stale": "x"},
        {"PKR_VAR_vsphere_password": "pw-123"},
    )
    assert env == {"PATH": "/bin", "CHECKPOINT_DISABLE": "1", "PKR_VAR_vsphere_password": "pw-123"}


# Secrets as Packer's machine-readable UI escapes them (hashicorp/packer packer/ui.go at 4e74a9c,
# MachineReadableUi.Machine: "," -> "%!(PACKER_COMMA)", then "\r" -> "\\r", then "\n" -> "\\n").
REDACTION_TABLE = [
    pytest.param(
        "pa,ss-word-1",
        id="comma",
        marks=pytest.mark.fault(
            "a vSphere password with a comma echoed by Packer -machine-readable",
            "redacted after un-escaping and escaped: not on the terminal, not in packer-build.log",
        ),
    ),
    pytest.param("multi\nline-secret", id="newline"),
    pytest.param("cr\rsecret-9", id="carriage-return"),
    pytest.param("a,\n,\r,b-mixed", id="mixed"),
    pytest.param("plain-secret-42", id="plain"),
]


def _fake_packer(bindir: Path, secret: str) -> Path:
    esc = escape(secret)
    lines = [
        f"1795668660,,ui,say,==> vsphere-iso.x: connecting with password {esc}",
        f"1795668661,vsphere-iso.x,ui,message,    vsphere-iso.x: echo {esc} (done)",
        f"1795668662,,ui,error,Build 'vsphere-iso.x' errored: login {esc} refused",
        "1795668662,,error-count,1",
    ]
    script = bindir / "packer"
    bindir.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint({chr(10).join(lines)!r}, flush=True)\nsys.exit(1)\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.allow_subp("packer")
@pytest.mark.parametrize("secret", REDACTION_TABLE)
def test_build_output_redacted_after_unescaping(tmp_path: Path, secret: str) -> None:
    assert unescape(escape(secret)) == secret  # the double escapes exactly as Packer does
    packer = _fake_packer(tmp_path / "bin", secret)
    terminal = io.StringIO()
    log_path = tmp_path / "build" / "packer-build.log"
    with pytest.raises(PackerError) as info:
        build(
            str(packer), tmp_path, only="vsphere-iso.x", env={"PATH": "/usr/bin:/bin"}, secrets=[secret],
            log_path=log_path, timeout=30, progress=Progress(terminal),
        )  # fmt: skip
    shown, kept = terminal.getvalue(), log_path.read_text()
    assert "***" in shown and "***" in kept and "***" in str(info.value)
    for form in {secret, escape(secret), *secret.replace("\r", "\n").split("\n")} - {""}:
        if len(form) >= 3 and form not in ("pa", "cr"):
            assert form not in shown and form not in kept and form not in str(info.value), form


def test_redaction_forms_cover_every_escaped_form() -> None:
    assert redaction_forms(["a,b\nc"]) == ["a,b\nc", "a%!(PACKER_COMMA)b\\nc"]
    assert redaction_forms(["plain"]) == ["plain"]
    event = parse_line("1,,ui,say,pw x%!(PACKER_COMMA)y!", ["x,y!"])
    assert event is not None and event.text == "pw ***"


@pytest.mark.allow_subp("packer")
def test_build_log_planted_as_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    packer = _fake_packer(tmp_path / "bin", "plain-secret-42")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log_path = tmp_path / "build" / "packer-build.log"
    log_path.parent.mkdir()
    log_path.symlink_to(victim)
    with pytest.raises(PackerError):
        build(
            str(packer), tmp_path, only="vsphere-iso.x", env={"PATH": "/usr/bin:/bin"}, secrets=[],
            log_path=log_path, timeout=30,
        )  # fmt: skip
    assert victim.read_text() == "precious\n"
    assert not log_path.is_symlink() and oct(log_path.stat().st_mode & 0o777) == "0o600"
    assert "errored" in log_path.read_text()
