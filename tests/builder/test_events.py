"""The Recorder (--events JSON Lines) and the plain progress display every long command shares."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from builder.events import EventsError, Recorder
from builder.progress import NullDisplay, PlainDisplay, make_display


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_steps_with_durations_fields_failures_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ci" / "events.jsonl"
    rec = Recorder("build", path)
    with rec.step("render", template="t1") as step:
        step.fields["files"] = 12
    with rec.step("validator", validator="shellcheck") as step:
        step.fail("SC2086 at scripts/10.sh:3")
    with pytest.raises(RuntimeError), rec.step("packer build"):
        raise RuntimeError("packer build failed: boom\nsecond line")
    rec.error("packer build failed: boom", 1)
    rec.close()
    got = lines(path)
    assert [(ln["event"], ln.get("step")) for ln in got] == [
        ("command_started", None),
        ("step_started", "render"),
        ("step_finished", "render"),
        ("step_started", "validator"),
        ("step_finished", "validator"),
        ("step_started", "packer build"),
        ("step_finished", "packer build"),
        ("error", None),
        ("command_finished", None),
    ]
    assert {ln["command"] for ln in got} == {"build"}
    render = got[2]
    assert render["ok"] is True and render["template"] == "t1" and render["files"] == 12
    assert isinstance(render["duration_seconds"], float) and render["duration_seconds"] >= 0
    assert got[4]["ok"] is False and got[4]["error"] == "SC2086 at scripts/10.sh:3"
    assert got[6]["ok"] is False and got[6]["error"] == "packer build failed: boom"
    assert got[7]["exit_code"] == 1 and got[-1]["ok"] is False
    # Appended: a second command adds its lines after the first's.
    again = Recorder("deploy", path)
    again.close()
    assert [ln["command"] for ln in lines(path)][-2:] == ["deploy", "deploy"]


def test_concurrent_steps_write_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    rec = Recorder("deploy", path)

    def clone(n: int) -> None:
        for _ in range(20):
            with rec.step("clone", announce=False, vm=f"vm-{n:02d}"):
                pass

    threads = [threading.Thread(target=clone, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rec.close()
    got = lines(path)  # every line parses
    finished = [ln for ln in got if ln["event"] == "step_finished"]
    assert len(finished) == 160 and len({ln["vm"] for ln in finished}) == 8


def test_unwritable_events_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(EventsError, match="cannot write the events file"):
        Recorder("build", tmp_path / "file" / "events.jsonl")


def test_plain_display_announces_long_steps_and_leaves_per_vm_steps_to_v() -> None:
    out = io.StringIO()
    rec = Recorder("deploy", None, PlainDisplay(out))
    with rec.step("wheelhouse", label="assemble the guest wheelhouse"):
        pass
    with rec.step("clone", announce=False, vm="edge-01"):
        pass
    with rec.step("validator", announce=False, validator="chrony") as step:
        step.fail("chrony.conf:3: invalid directive")
    with pytest.raises(ValueError), rec.step("preflight"):
        raise ValueError("datastore 'X' not found")
    text = out.getvalue()
    assert text.splitlines()[0] == "assemble the guest wheelhouse ..."
    assert text.splitlines()[1].startswith("assemble the guest wheelhouse: ok (")
    assert "edge-01" not in text  # each VM is printed once, by the command's table
    assert "validator chrony: failed (" in text  # a failure is always shown
    # A step whose exception ends the command leaves the one `error:` line to the command.
    assert "preflight ..." in text and "preflight: failed" not in text

    verbose = io.StringIO()
    rec = Recorder("deploy", None, PlainDisplay(verbose, verbose=True))
    with rec.step("clone", announce=False, vm="edge-01"):
        pass
    assert "clone edge-01 ..." in verbose.getvalue() and "clone edge-01: ok (" in verbose.getvalue()


def test_quiet_means_no_display_and_a_pipe_means_plain() -> None:
    assert isinstance(make_display(-1, io.StringIO()), NullDisplay)
    assert isinstance(make_display(0, io.StringIO()), PlainDisplay)
