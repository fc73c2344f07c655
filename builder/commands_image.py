"""`builder init | schema | validate | render`: the image spec side of the CLI.

Exit codes (`builder.rc.RC`): 0 ok, 1 the operation failed, 2 usage (an unknown `--only` name), 3
invalid spec (every problem listed as `FILE:LINE: path: message` on stderr, and in the JSON document with
`--format json`), 4 a rendered artifact was rejected by a validator. Results go to stdout, problems and
logs to stderr. `NO_COLOR` turns colour off.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from builder import junit
from builder.assets import templates_dir
from builder.cli_common import (
    COMMON_ENV,
    EVENTS,
    FORMAT,
    TMPDIR_ENV,
    default_build_dir,
    epilog,
    fail,
    fail_input,
    output_option,
    recorder,
    require_tmpdir,
)
from builder.pin import URLS as PIN_URLS
from builder.progress import interactive
from builder.rc import RC
from builder.render import RenderError, render
from builder.spec import ImageSpec, SpecError, json_schema, load_spec, spec_warnings
from builder.validators import VALIDATORS, Outcome, Status, run_validators, unknown_names

INIT_TEMPLATE = "init/image-spec.yaml"


def _color() -> bool:
    import os
    import sys

    return "NO_COLOR" not in os.environ and sys.stdout.isatty()


JUNIT = click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JUnit XML file: one test case per validator (failures carry the tool's message).",
)


@contextmanager
def _spec_errors() -> Iterator[None]:
    """Invalid spec -> every issue on stderr, exit 3; render failure -> one line, exit 1."""
    try:
        yield
    except SpecError as exc:
        fail_input(exc, "image spec")
    except RenderError as exc:
        fail(str(exc))


def _load(path: Path) -> ImageSpec:
    return load_spec(path)


@click.command(
    "init",
    epilog=epilog(["builder init image.yaml", "builder init image.yaml --force"], COMMON_ENV, (RC.FAILED,)),
)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@FORMAT
def init_command(path: Path, force: bool, fmt: str) -> None:
    """Write a commented example image spec to PATH."""
    if path.exists() and not force:
        fail(f"{path} exists; use --force to overwrite it")
    text = (templates_dir() / INIT_TEMPLATE).read_text(encoding="utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc}")
    if fmt == "json":
        click.echo(json.dumps({"ok": True, "path": str(path)}))
    else:
        click.echo(str(path))


@click.command("schema", epilog=epilog("builder schema > image-spec.schema.json"))
@FORMAT
def schema_command(fmt: str) -> None:
    """Print the image spec's JSON Schema (JSON whatever --format says)."""
    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


def _status_word(outcome: Outcome, color: bool) -> str:
    colors = {Status.PASSED: "green", Status.FAILED: "red", Status.SKIPPED: "yellow"}
    word = f"{outcome.status.value:<7}"
    return click.style(word, fg=colors[outcome.status]) if color else word


def _print_outcomes(outcomes: list[Outcome], color: bool) -> None:
    for outcome in outcomes:
        head = f"{_status_word(outcome, color)} {outcome.name:<11} "
        lines = outcome.message.splitlines() or [""]
        click.echo(f"{head}{lines[0]}  ({outcome.seconds:.1f}s)", color=color)
        for line in lines[1:]:
            click.echo(f"{'':20}{line}", color=color)


@click.command(
    "validate",
    epilog=epilog(
        [
            "builder validate examples/rocky9.yaml",
            "builder validate examples/rocky9.yaml --only kickstart --only shellcheck --junit validate.xml",
            "builder validate --build-dir build/rocky9 --format json",
        ],
        [
            "PATH: the validators' tools (" + ", ".join(t for t, _ in VALIDATORS.values()) + ")",
            TMPDIR_ENV,
            *COMMON_ENV,
        ],
        (RC.FAILED, RC.INVALID_INPUT, RC.ARTIFACT_REJECTED),
    ),
)
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--build-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Validate an already rendered build dir instead of rendering SPEC.",
)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help="Run only this validator (repeatable): " + ", ".join(VALIDATORS) + ".",
)
@JUNIT
@EVENTS
@FORMAT
def validate_command(
    spec: Path | None, build_dir: Path | None, only: tuple[str, ...], junit_path: Path | None, fmt: str
) -> None:
    """Check SPEC, render it to a temporary dir and run every validator found on the result."""
    if (spec is None) == (build_dir is None):
        raise click.UsageError("give either SPEC or --build-dir")
    unknown = unknown_names(only)
    if unknown:
        names = ", ".join(map(repr, unknown))
        fail(f"unknown validator(s) {names} for --only; known: {', '.join(VALIDATORS)}", RC.USAGE)
    require_tmpdir(os.environ)
    warnings: list[str] = []
    rec = recorder()
    with _spec_errors():
        if spec is not None:
            image = _load(spec)
            warnings = spec_warnings(image)
            with tempfile.TemporaryDirectory(prefix="arcbake-validate-") as tmp:
                with rec.step("render", announce=False):
                    result = render(image, Path(tmp) / "build")
                with rec.step("validators", announce=interactive()):
                    outcomes = run_validators(result.out_dir, only=only or None, recorder=rec)
        else:
            assert build_dir is not None  # noqa: S101 - narrowed by the check above
            with rec.step("validators", announce=interactive()):
                outcomes = run_validators(build_dir, only=only or None, recorder=rec)
    if junit_path is not None:
        try:
            junit.write(junit_path, [junit.Suite("arcbake validate", junit.validator_cases(outcomes))])
        except OSError as exc:
            fail(f"cannot write the JUnit file {junit_path}: {exc.strerror}")
    failed = [o for o in outcomes if o.status is Status.FAILED]
    rejected = f"rejected by {', '.join(o.name for o in failed)}"
    if fmt == "json":
        doc: dict[str, object] = {
            "spec": str(spec) if spec else None,
            "build_dir": str(build_dir) if build_dir else None,
            "ok": not failed,
            "warnings": warnings,
            "validators": [o.to_dict() for o in outcomes],
        }
        if failed:
            # The same document, with the error fields every failing --format json answer has.
            doc.update(error=rejected, exit_code=int(RC.ARTIFACT_REJECTED))
        click.echo(json.dumps(doc, indent=2))
        if failed:
            click.echo(f"error: {rejected}", err=True)
            raise click.exceptions.Exit(int(RC.ARTIFACT_REJECTED))
    else:
        _print_outcomes(outcomes, _color())
    if failed:
        fail(rejected, RC.ARTIFACT_REJECTED)


@click.command(
    "render",
    epilog=epilog(
        [
            "builder render examples/rocky9.yaml",
            "builder render examples/rocky9.yaml -o /tmp/build --format json",
            "builder render examples/rocky9.yaml --wheelhouse",
        ],
        [
            TMPDIR_ENV,
            "XDG_CACHE_HOME: with --wheelhouse, wheels are cached under $XDG_CACHE_HOME/arcbake/wheelhouse",
            "PIP_INDEX_URL / HTTPS_PROXY: with --wheelhouse, where pip downloads the locked wheels from",
            *COMMON_ENV,
        ],
        (RC.FAILED, RC.INVALID_INPUT),
    ),
)
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@output_option("out_dir", directory=True, help_text="Build dir (default: build/<spec name>, as for build).")
@click.option(
    "--wheelhouse",
    "with_wheelhouse",
    is_flag=True,
    help="Also assemble the guest wheelhouse into DIR/wheelhouse (the arcbake wheel, the locked "
    "dependencies, requirements.txt), as build does, without a vCenter.",
)
@FORMAT
def render_command(spec: Path, out_dir: Path | None, with_wheelhouse: bool, fmt: str) -> None:
    """Render SPEC into the build dir (packer/, http/, rootfs/, scripts/; wheelhouse/ with --wheelhouse)."""
    require_tmpdir(os.environ)
    with _spec_errors():
        result = render(_load(spec), out_dir or default_build_dir(spec))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    wheels: list[Path] = []
    if with_wheelhouse:
        from builder import wheelhouse

        try:
            with recorder().step("wheelhouse", label="assemble the guest wheelhouse"):
                wheels = wheelhouse.assemble(result.out_dir / "wheelhouse")
        except wheelhouse.WheelhouseError as exc:
            fail(f"assembling the guest wheelhouse: {exc}")
    if fmt == "json":
        doc = {
            "build_dir": str(result.out_dir),
            "vm_name": result.vm_name,
            "packer_only": result.packer_only,
            "plugins_included": result.plugins_included,
            "files": [str(p.relative_to(result.out_dir)) for p in result.files],
            "wheelhouse": [w.name for w in wheels] if with_wheelhouse else None,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(
            f"rendered {result.out_dir} (template {result.vm_name}, packer -only={result.packer_only}, "
            f"{len(result.files)} files)"
        )
        if with_wheelhouse:
            click.echo(f"wheelhouse {result.out_dir / 'wheelhouse'} ({len(wheels)} wheels)")


PIN_ENV = [f"{name}: base URL (default {default})" for name, default in PIN_URLS.items()]


@click.command(
    "pin",
    epilog=epilog(
        [
            "builder pin image.yaml",
            "builder pin image.yaml --k3s v1.31.5+k3s1 --format json",
            "ARCBAKE_K3S_RELEASES_URL=https://mirror.example/k3s builder pin image.yaml",
        ],
        [*PIN_ENV, "HTTPS_PROXY / NO_PROXY: honoured for the downloads", *COMMON_ENV],
        (RC.FAILED, RC.INVALID_INPUT),
    ),
)
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--k3s", "k3s_version", metavar="VERSION", help="Pin this K3s release (e.g. v1.31.5+k3s1).")
@FORMAT
def pin_command(spec: Path, k3s_version: str | None, fmt: str) -> None:
    """Write the K3s release's real sha256 values (binary, airgap images, install script) into SPEC.

    Fetches the release's sha256sum-amd64.txt and install.sh at the tag, checks that the pinned az CLI
    and extension versions exist, and rewrites only those values: comments and layout are kept. Nothing
    is written unless every fetch and check succeeded."""
    from builder.pin import PinError, pin

    try:
        with _spec_errors():
            result = pin(spec, os.environ, k3s_version)
    except ValueError as exc:
        fail(str(exc), RC.USAGE)
    except PinError as exc:
        fail(f"{spec}: nothing written: {exc}")
    if fmt == "json":
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    for key, (old, new) in result.changed.items():
        click.echo(f"{key}: {old} -> {new}")
    for key, value in result.checked.items():
        click.echo(f"{key}: {value} exists")
    click.echo(f"{spec}: {'pinned' if result.changed else 'already pinned to'} K3s {result.version}")


COMMANDS: list[click.Command] = [init_command, schema_command, validate_command, render_command, pin_command]
