"""Packer -machine-readable parsing, on lines captured from Packer 1.6.6 against the simulator."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from builder.packer import Collector, Event, Progress, child_env, parse_line, unescape

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
