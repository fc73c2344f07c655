"""`builder init | schema | render | validate` through the real click group (exit codes, streams)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from click.testing import CliRunner
from spec_base import BASE, variant

from builder.cli import cli
from builder.rc import RC
from builder.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_init_writes_a_spec_that_validates(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    code, out, _ = run("init", str(path))
    assert code == RC.OK
    assert out.strip() == str(path)
    text = path.read_text()
    assert text.startswith("# arcbake image spec")
    assert sum(1 for line in text.splitlines() if line.lstrip().startswith("#")) > 10
    spec = load_spec(path)
    assert spec.os.variant == "rocky9"


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_text("mine\n")
    code, _, err = run("init", str(path))
    assert code == RC.FAILED
    assert "--force" in err
    assert path.read_text() == "mine\n"
    code, _, _ = run("init", "--force", str(path))
    assert code == RC.OK
    assert path.read_text().startswith("# arcbake image spec")


def test_schema_is_json_schema_that_accepts_the_examples() -> None:
    code, out, _ = run("schema")
    assert code == RC.OK
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {"os", "source", "vsphere", "k3s", "time", "azure"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("rocky8", "rocky9", "rhel8", "rhel9"):
        doc = yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
        assert list(validator.iter_errors(doc)) == [], name
    assert list(validator.iter_errors({"os": {"distro": "debian"}}))


def test_invalid_spec_exit_3_every_problem_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        variant("major: 9", "major: 10").replace("version: v1.31.4+k3s1", "version: latest"), encoding="utf-8"
    )
    for command in (["validate", str(path)], ["render", str(path), "-o", str(tmp_path / "out")]):
        code, out, err = run(*command)
        assert code == RC.INVALID_INPUT
        assert out == ""
        assert f"{path}:3: os.major: Input should be 8 or 9" in err
        assert f"{path}:14: k3s.version: " in err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_yaml_syntax_error_exit_3(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("os:\n  distro: [rocky\n")
    code, _, err = run("validate", str(path))
    assert code == RC.INVALID_INPUT
    assert f"{path}:3: (top level): YAML syntax error" in err


def test_validate_needs_spec_or_build_dir() -> None:
    code, _, err = run("validate")
    assert code == RC.USAGE
    assert "either SPEC or --build-dir" in err


@pytest.mark.allow_subp("packer")
def test_render_writes_the_build_dir(tmp_path: Path) -> None:
    spec = tmp_path / "image.yaml"
    spec.write_text(BASE)
    out = tmp_path / "build"
    code, stdout, _ = run("render", str(spec), "-o", str(out), "--format", "json")
    assert code == RC.OK
    doc = json.loads(stdout)
    assert doc["packer_only"] == "vsphere-clone.clone_offline"
    assert doc["plugins_included"] is False  # Packer 1.6.6 is what this machine has
    assert "http/ks.cfg" in doc["files"]
    assert (out / "packer/arcbake.auto.pkrvars.json").is_file()


@pytest.mark.allow_subp("packer")
def test_render_refuses_foreign_dir(tmp_path: Path) -> None:
    spec = tmp_path / "image.yaml"
    spec.write_text(BASE)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.txt").write_text("x")
    code, _, err = run("render", str(spec), "-o", str(tmp_path / "notes"))
    assert code == RC.FAILED
    assert "not an arcbake build dir" in err
    assert (tmp_path / "notes/todo.txt").read_text() == "x"


@pytest.mark.fault("builder validate /dev/zero, a FIFO or a 2 MiB spec", "exit 3, one line, bounded read")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "too-large"])
def test_validate_reads_inputs_bounded(tmp_path: Path, kind: str) -> None:
    # Issue 8: `builder validate /dev/zero` read without bound; a FIFO would block forever.
    path = tmp_path / "spec.yaml"
    if kind == "dev-zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("# padding\n" * 200_000)
    code, _, err = run("validate", str(path))
    assert code == 3
    lines = [line for line in err.splitlines() if line.startswith(str(path))]
    assert len(lines) == 1
    assert ("1 MiB limit" if kind == "too-large" else "not a regular file") in lines[0]
    assert "Traceback" not in err
