"""CLI conventions shared by every builder command: -v/-q anywhere, --version, --format json errors,
--only names, render's default -o, help with examples/environment/exit codes, JUnit and events files."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import junitparser
import pytest
from click.testing import CliRunner
from spec_base import BASE

from builder.cli import cli
from builder.rc import RC
from builder.validators import VALIDATORS

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


def console(prog: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / prog), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "image.yaml"
    path.write_text(BASE)
    return path


@pytest.mark.parametrize(
    ("args", "level"),
    [
        (["-v", "schema"], logging.INFO),
        (["schema", "-v"], logging.INFO),
        (["-v", "schema", "-v"], logging.DEBUG),
        (["schema", "-vv"], logging.DEBUG),
        (["-q", "schema"], logging.ERROR),
        (["schema", "-q"], logging.ERROR),
        (["-v", "schema", "-q"], logging.WARNING),
        (["schema"], logging.WARNING),
    ],
)
def test_verbosity_counts_the_same_before_and_after_the_subcommand(args: list[str], level: int) -> None:
    code, _, _ = run(*args)
    assert code == RC.OK
    assert logging.getLogger().level == level


COMMANDS = ["init", "schema", "validate", "render", "pin", "build", "deploy", "status"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_accepts_v_and_q_after_itself(command: str) -> None:
    code, out, _ = run(command, "-v", "-q", "--help")
    assert code == RC.OK and "Usage:" in out


@pytest.mark.allow_subp("git")
@pytest.mark.parametrize("prog", ["builder", "firstboot"])
def test_version_names_version_commit_and_python(prog: str) -> None:
    proc = console(prog, "--version")
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(
        rf"{prog} (\S+) \(commit ([0-9a-f]{{40}}|unknown), Python (\d+\.\d+\.\d+)\)\n", proc.stdout
    )
    assert match, proc.stdout
    assert match.group(3) == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_examples_environment_and_exit_codes(command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == RC.OK
    assert f"builder {command}" in out.split("Examples:", 1)[1]
    assert re.search(r"Exit codes:\n\s+0\s+ok\n", out)
    assert "130 interrupted" in out
    if command in ("build", "deploy", "status"):
        assert "VSPHERE_SERVER" in out and "VSPHERE_PASSWORD" in out
    if command != "schema":
        assert "NO_COLOR" in out


@pytest.mark.parametrize("command", ["run", "status", "doctor"])
def test_firstboot_help_shows_example_environment_and_exit_codes(command: str) -> None:
    proc = console("firstboot", command, "--help")
    assert proc.returncode == 0
    assert f"example:\n  firstboot {command}" in proc.stdout
    assert "environment:" in proc.stdout and "exit codes:\n  0 " in proc.stdout


def test_firstboot_verbosity_before_and_after_the_subcommand(tmp_path: Path) -> None:
    for args in (["-v", "status"], ["status", "-v"], ["-q", "status", "-q"]):
        proc = console("firstboot", *args, "--root", str(tmp_path))
        assert proc.returncode == 2, (args, proc.stderr)  # not finished: firstboot never ran here
        assert "state:   pending" in proc.stdout


def test_unknown_only_name_is_a_usage_error_naming_the_known_ones(spec: Path) -> None:
    code, out, err = run("validate", str(spec), "--only", "kickstart", "--only", "typo")
    assert code == RC.USAGE
    assert out == ""
    assert "'typo'" in err and all(name in err for name in VALIDATORS)
    code, out, _ = run("validate", str(spec), "--only", "typo", "--format", "json")
    doc = json.loads(out)
    assert code == RC.USAGE and doc["ok"] is False and doc["exit_code"] == 2 and "typo" in doc["error"]


def test_invalid_spec_with_format_json_prints_the_problems_as_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("k3s:", "k3s:\n  bogus_key: 1", 1))
    for command in ("validate", "render"):
        code, out, err = run(command, str(bad), "--format", "json")
        assert code == RC.INVALID_INPUT, err
        doc = json.loads(out)
        assert doc["ok"] is False and doc["exit_code"] == 3
        assert any(i["path"] == "k3s.bogus_key" and i["line"] for i in doc["issues"]), doc
        assert "k3s.bogus_key" in err  # the text form stays on stderr


def test_usage_errors_with_format_json_are_json(tmp_path: Path) -> None:
    proc = console("builder", "render", "--format", "json")
    assert proc.returncode == RC.USAGE
    doc = json.loads(proc.stdout)
    assert doc == {"ok": False, "error": "Missing argument 'SPEC'.", "exit_code": 2, "issues": []}
    assert console("builder", "render").stdout == ""


@pytest.mark.allow_subp("packer")
def test_render_defaults_its_output_like_build(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("render", str(spec), "--format", "json")
    assert code == RC.OK, err
    assert Path(json.loads(out)["build_dir"]) == (tmp_path / "build" / "image").absolute()
    assert (tmp_path / "build/image/http/ks.cfg").is_file()


@pytest.mark.allow_subp("packer", "shellcheck", "chronyd")
def test_validate_junit_one_case_per_validator_failures_carry_the_tools_message(
    spec: Path, tmp_path: Path
) -> None:
    build_dir = tmp_path / "build"
    assert run("render", str(spec), "-o", str(build_dir))[0] == RC.OK
    script = sorted((build_dir / "scripts").glob("*.sh"))[0]
    script.write_text(script.read_text() + "\necho $undefined_var_here\n[ $1 = x ]\n")
    junit = tmp_path / "reports" / "validate.xml"
    events = tmp_path / "events.jsonl"
    code, out, _ = run(
        "validate", "--build-dir", str(build_dir), "--only", "shellcheck", "--only", "chrony",
        "--junit", str(junit), "--events", str(events), "--format", "json",
    )  # fmt: skip
    assert code == RC.ARTIFACT_REJECTED
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == 4 and doc["error"] == "rejected by shellcheck"

    xml = junitparser.JUnitXml.fromfile(str(junit))
    cases = {case.name: case for suite in xml for case in suite}
    assert set(cases) == {"shellcheck", "chrony"}
    assert cases["chrony"].is_passed
    failure = cases["shellcheck"].result[0]
    assert isinstance(failure, junitparser.Failure)
    assert "SC2086" in (failure.text or "") and script.name in (failure.text or "")
    assert xml.failures == 1 and xml.tests == 2

    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[0]["event"] == "command_started" and lines[-1] == {
        **lines[-1],
        "event": "command_finished",
        "ok": False,
    }
    finished = {
        ln["validator"]: ln for ln in lines if ln["event"] == "step_finished" and ln["step"] == "validator"
    }
    assert finished["chrony"]["ok"] is True and finished["shellcheck"]["ok"] is False
    assert all(ln["duration_seconds"] >= 0 for ln in finished.values())
    started = [ln for ln in lines if ln["event"] == "step_started" and ln["step"] == "validator"]
    assert len(started) == 2


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run builder with stdout and stderr on a pseudo-terminal; return everything it wrote."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "builder"), *args], stdout=secondary, stderr=secondary, env=env, close_fds=True
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.allow_subp("packer", "chronyd")
def test_colour_on_a_terminal_only_and_never_with_no_color(spec: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    args = ["validate", str(spec), "--only", "chrony"]
    coloured = _on_a_terminal(args, env)
    assert "chrony" in coloured and COLOUR.search(coloured), coloured
    plain = _on_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert "passed  chrony" in plain and not COLOUR.search(plain), plain
    # Not a terminal: plain text, no progress redraws.
    code, out, err = run(*args)
    assert code == RC.OK and "passed  chrony" in out and "\x1b" not in out + err


COMMANDS_WITH_FILE = [
    ["init", "{missing}/sub/x.yaml"],
    ["validate", "{missing}.yaml"],
    ["render", "{missing}.yaml"],
    ["build", "{missing}.yaml"],
    ["deploy", "{missing}.yaml"],
    ["status", "{missing}.yaml"],
    ["report", "{missing}.yaml"],
    ["destroy", "{missing}.yaml", "--yes"],
    ["templates", "{missing}.yaml"],
]


@pytest.mark.parametrize("args", COMMANDS_WITH_FILE, ids=lambda a: a[0])
def test_every_command_answers_errors_in_json(args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "missing"
    if args[0] == "init":
        (tmp_path / "no-such-dir").write_text("a file where a directory is needed")
    argv = [a.format(missing=missing) for a in args]
    code, out, err = run(*argv, "--format", "json", env={"VSPHERE_SERVER": "127.0.0.1:9"})
    assert code in (RC.FAILED, RC.INVALID_INPUT), err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["exit_code"] == code and doc["error"], doc
    assert f"error: {doc['error']}" in err


def test_schema_and_init_accept_format_json(tmp_path: Path) -> None:
    code, out, _ = run("schema", "--format", "json")
    assert code == RC.OK and json.loads(out)["type"] == "object"
    code, out, _ = run("init", str(tmp_path / "i.yaml"), "--format", "json")
    assert code == RC.OK and json.loads(out) == {"ok": True, "path": str(tmp_path / "i.yaml")}
