"""`builder build | deploy | status`: the vSphere side of the CLI.

Every failure is one line on stderr and an exit code of `builder.rc.RC`: 1 the operation failed (vSphere
unreachable, login refused, an object missing, Packer failed), 3 an invalid spec or fleet file (every
problem listed with file, line and path), 130 interrupted. Results (tables, `--format json`) go to stdout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from builder.cli_common import FORMAT, echo_issues, fail
from builder.rc import RC
from builder.yamlsrc import InputError


@contextmanager
def _errors() -> Iterator[None]:
    """Map the project's exceptions to one-line messages and exit codes (never a traceback)."""
    from builder.azure_arm import AzureError
    from builder.build import ValidationFailedError
    from builder.packer import PackerError
    from builder.render import RenderError
    from builder.vsphere.connection import VSphereError

    try:
        yield
    except InputError as exc:
        echo_issues(exc)
        raise click.exceptions.Exit(int(RC.INVALID_INPUT)) from None
    except ValidationFailedError as exc:
        fail(str(exc), RC.ARTIFACT_REJECTED)
    except (VSphereError, PackerError, RenderError, AzureError) as exc:
        fail(str(exc))


def _session() -> Any:
    from builder.vsphere.connection import Credentials, connect

    return connect(Credentials.from_env(os.environ))


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command()
@click.argument("fleet_file", metavar="FLEET", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Delete and clone again VMs whose configuration changed.")
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Clones at a time."
)
@FORMAT
def deploy(fleet_file: Path, replace: bool, concurrency: int, fmt: str) -> None:
    """Clone the fleet's VMs from its template, write their guestinfo and power them on (idempotent)."""
    from builder.deploy import VmResult
    from builder.deploy import deploy as run_deploy
    from builder.fleet import load_fleet

    def progress(result: VmResult) -> None:
        click.echo(f"  {result.name}: {result.action} ({result.seconds:.1f}s) {result.message}", err=True)

    with _errors():
        fleet = load_fleet(fleet_file)
        with _session() as session:
            report = run_deploy(
                fleet, session, os.environ, replace=replace, concurrency=concurrency, progress=progress
            )
    if fmt == "json":
        _emit_json(report.as_dict())
    else:
        width = max(len(r.name) for r in report.results)
        for r in report.results:
            click.echo(f"{r.name.ljust(width)}  {r.action:<9}  {r.moid or '-':<8}  {r.message}")
        counts: dict[str, int] = {}
        for r in report.results:
            counts[r.action] = counts.get(r.action, 0) + 1
        summary = ", ".join(f"{n} {a}" for a, n in counts.items())
        click.echo(
            f"fleet {report.fleet} from template {report.template}: {summary} in {report.seconds:.1f}s",
            err=True,
        )
    if not report.ok:
        raise click.exceptions.Exit(int(RC.FAILED))


@click.command()
@click.argument("fleet_file", metavar="FLEET", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--wait", is_flag=True, help="Poll until every VM is done or failed; exit 0 only if all are done."
)
@click.option(
    "--timeout", type=click.FloatRange(0), default=1800.0, show_default=True, help="Seconds for --wait."
)
@click.option(
    "--interval", type=click.FloatRange(0.1), default=10.0, show_default=True, help="Poll interval."
)
@FORMAT
def status(fleet_file: Path, wait: bool, timeout: float, interval: float, fmt: str) -> None:
    """Each VM's onboarding status (guestinfo.arcbake.status) as a table or JSON."""
    from builder import status as st
    from builder.fleet import load_fleet

    with _errors():
        fleet = load_fleet(fleet_file)
        with _session() as session:
            simulator = st.is_simulator(session)
            if wait:

                def on_poll(rows: list[st.VmStatus]) -> None:
                    counts: dict[str, int] = {}
                    for row in rows:
                        counts[row.state] = counts.get(row.state, 0) + 1
                    click.echo(
                        "waiting: " + ", ".join(f"{n} {state}" for state, n in counts.items()), err=True
                    )

                rows, finished = st.wait_status(session, fleet, timeout, interval, on_poll=on_poll)
            else:
                rows, finished = st.read_status(session, fleet), True
    no_report = sum(r.state == st.NO_REPORT for r in rows)
    if fmt == "json":
        _emit_json({"fleet": fleet.name, "simulator": simulator, "vms": [r.as_dict() for r in rows]})
    else:
        click.echo(st.table(rows))
        if no_report:
            why = (
                "this is the vCenter simulator, which runs no guest OS, so no guest will ever report"
                if simulator
                else "they have not booted to firstboot yet, or VMware Tools is not running"
            )
            click.echo(f"{no_report} of {len(rows)} VM(s) have no report from their guest: {why}.")
    if wait:
        code = RC.OK if finished and all(r.state == "done" for r in rows) else RC.FAILED
        if not finished:
            click.echo(f"error: not every VM finished within {timeout:g}s", err=True)
    else:
        code = RC.FAILED if any(r.state in ("failed", st.MISSING, st.UNREADABLE) for r in rows) else RC.OK
    if code != RC.OK:
        raise click.exceptions.Exit(int(code))


@click.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build dir (default: build/<spec name>).",
)
@click.option(
    "--on-error",
    type=click.Choice(["cleanup", "abort"]),
    default="cleanup",
    show_default=True,
    help="Packer -on-error: delete the failed VM, or keep it for debugging.",
)
@click.option(
    "--timeout", type=click.FloatRange(1), default=4 * 3600.0, show_default=True, help="Seconds for Packer."
)
@click.option("--skip-validators", is_flag=True, help="Do not run the validators on the rendered build dir.")
@FORMAT
def build(
    spec_file: Path, out_dir: Path | None, on_error: str, timeout: float, skip_validators: bool, fmt: str
) -> None:
    """Render, validate, run Packer, publish the template, prune old ones; write DIR/manifest.json."""
    from builder.build import BuildOptions
    from builder.build import build as run_build

    options = BuildOptions(
        out_dir=out_dir or Path("build") / spec_file.stem,
        on_error=on_error,
        timeout=timeout,
        run_validators=not skip_validators,
    )
    with _errors():
        manifest = run_build(spec_file, os.environ, options)
    if fmt == "json":
        _emit_json(manifest)
        return
    tpl = manifest["template"]
    ret = manifest["retention"]
    click.echo(f"template   {tpl['name']}  ({tpl['moid']}, instance uuid {tpl['instance_uuid']})")
    if "content_library" in tpl:
        lib = tpl["content_library"]
        click.echo(f"library    {lib['library']} / {lib['item']}")
    click.echo(f"spec       sha256 {manifest['spec']['sha256'][:16]}  K3s {manifest['k3s']['version']}")
    took = manifest["duration_seconds"]
    click.echo(f"built      in {took:.1f}s with Packer {manifest['packer']['version']}")
    click.echo(f"retention  kept {', '.join(ret['kept']) or '-'}; removed {', '.join(ret['removed']) or '-'}")
    for name, vms in ret["kept_linked"].items():
        click.echo(f"           kept {name}: linked VMs {', '.join(vms)}")
    click.echo(f"manifest   {options.out_dir / 'manifest.json'}")


COMMANDS: list[click.Command] = [build, deploy, status]
