"""`builder build | deploy | status`: the vSphere side of the CLI.

Every failure is one line on stderr and an exit code of `builder.rc.RC`: 1 the operation failed (vSphere
unreachable, login refused, an object missing, Packer failed), 3 an invalid spec or fleet file (every
problem listed with file, line and path), 4 a rendered artifact rejected, 130 interrupted. Results
(tables, `--format json`, errors included) go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from builder.cli_common import (
    COMMON_ENV,
    EVENTS,
    FORMAT,
    TMPDIR_ENV,
    VSPHERE_ENV,
    default_build_dir,
    epilog,
    fail,
    fail_input,
    output_option,
    recorder,
    require_tmpdir,
    verbosity,
)
from builder.rc import RC
from firstboot.located_yaml import InputError

VSPHERE_HELP_ENV = (VSPHERE_ENV, *COMMON_ENV)


def _raised(*paths: str) -> tuple[type[BaseException], ...]:
    """The named exception classes whose modules are imported already. An exception of a module that was
    never imported cannot have been raised, so the handler need not import it (`builder status` stays
    clear of the renderer, Packer and Azure modules)."""
    out: list[type[BaseException]] = []
    for path in paths:
        module, _, name = path.rpartition(".")
        if module in sys.modules:
            out.append(getattr(sys.modules[module], name))
    return tuple(out)


@contextmanager
def _errors() -> Iterator[None]:
    """Map the project's exceptions to one-line messages and exit codes (never a traceback)."""
    from builder.vsphere.connection import TRANSPORT_ERRORS, VSphereError, fault_message

    try:
        yield
    except InputError as exc:
        spec_or_fleet = "fleet file" if isinstance(exc, _raised("builder.fleet.FleetError")) else "image spec"
        fail_input(exc, spec_or_fleet)
    except Exception as exc:
        if isinstance(exc, _raised("builder.build.ValidationFailedError")):
            fail(str(exc), RC.ARTIFACT_REJECTED)
        failed = _raised(
            "builder.packer.PackerError", "builder.render.RenderError", "builder.azure_arm.AzureError"
        )
        if isinstance(exc, (VSphereError, *failed)):
            fail(str(exc))
        if isinstance(exc, TRANSPORT_ERRORS):
            # The vCenter connection broke where no operation named it (status, a lookup).
            fail(f"vCenter connection lost ({fault_message(exc)})")
        raise


def _session() -> Any:
    from builder.vsphere.connection import Credentials, connect

    return connect(Credentials.from_env(os.environ))


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _fleet_command(*examples: str) -> Callable[[Callable[..., None]], click.Command]:
    """A command on FLEET that reads vSphere: its --help examples, environment and exit codes."""

    def wrap(func: Callable[..., None]) -> click.Command:
        fleet_arg = click.argument(
            "fleet_file", metavar="FLEET", type=click.Path(dir_okay=False, path_type=Path)
        )
        help_end = epilog(list(examples), VSPHERE_HELP_ENV, (RC.FAILED, RC.INVALID_INPUT))
        return click.command(epilog=help_end)(fleet_arg(func))

    return wrap


@click.command(
    epilog=epilog(
        [
            "builder deploy examples/demo-fleet.yaml",
            "builder deploy fleet.yaml --replace --events deploy.jsonl",
        ],
        [VSPHERE_ENV, "the secrets the fleet file references by {env: NAME}", *COMMON_ENV],
        (RC.FAILED, RC.INVALID_INPUT),
    )
)
@click.argument("fleet_file", metavar="FLEET", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--replace",
    is_flag=True,
    help="Delete and clone again VMs whose configuration changed: whole K3s clusters only (a VM whose "
    "cluster keeps other deployed, unchanged VMs is refused, exit 1: use `builder rollout`).",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Clones at a time."
)
@EVENTS
@FORMAT
def deploy(fleet_file: Path, replace: bool, concurrency: int, fmt: str) -> None:
    """Clone the fleet's VMs from its template, write their guestinfo and power them on (idempotent).

    Each VM is printed once, in the result table; on a terminal, a spinner per clone and power-on shows
    what is in flight. A fleet whose K3s clusters the template's firewall profile cannot carry (agents
    need multi-node, several servers ha-etcd) is refused before anything is cloned (exit 3)."""
    from builder.deploy import deploy as run_deploy
    from builder.fleet import load_fleet

    rec = recorder()
    with _errors():
        fleet = load_fleet(fleet_file)
        label = f"deploy fleet {fleet.name} ({len(fleet.vms)} VMs)"
        with _session() as session, rec.step("deploy", label=label, announce=False):
            report = run_deploy(
                fleet, session, os.environ, replace=replace, concurrency=concurrency, recorder=rec
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


@_fleet_command(
    "builder status examples/demo-fleet.yaml", "builder status fleet.yaml --wait --timeout 3600 --format json"
)
@click.option(
    "--wait",
    is_flag=True,
    help="Poll until every VM is done or failed (returns at once when no guest can report); "
    "exit 0 only if all are done.",
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
                rows, finished = _wait(session, fleet, timeout, interval, simulator)
            else:
                rows, finished = st.read_status(session, fleet), True
                _say_secrets(rows)
    no_report = sum(r.state == st.NO_REPORT for r in rows)
    stuck = [r.name for r in rows if st.cannot_report(r, simulator)]
    if fmt == "json":
        ok = all(r.state == "done" for r in rows) if wait else not failing(rows)
        _emit_json(
            {"ok": ok, "fleet": fleet.name, "simulator": simulator, "vms": [r.as_dict() for r in rows]}
        )
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
        if not finished and stuck and all(r.state in st.FINAL or r.name in stuck for r in rows):
            click.echo(f"error: no report can come from {', '.join(stuck)}; not waiting", err=True)
        elif not finished:
            click.echo(f"error: not every VM finished within {timeout:g}s", err=True)
    else:
        code = RC.FAILED if failing(rows) else RC.OK
    if code != RC.OK:
        raise click.exceptions.Exit(int(code))


def _say_secrets(rows: list[Any]) -> None:
    """Tell the operator on stderr which VMs' secrets status removed (or could not remove) just now."""
    for row in rows:
        if row.secrets:
            click.echo(f"{row.name}: {row.secrets}", err=True)


def failing(rows: list[Any]) -> bool:
    """A VM failed, is missing or its status is unreadable (status exits 1 without --wait)."""
    from builder import status as st

    return any(r.state in ("failed", st.MISSING, st.UNREADABLE) for r in rows)


def _wait(
    session: Any, fleet: Any, timeout: float, interval: float, simulator: bool
) -> tuple[list[Any], bool]:
    """status --wait: a spinner on a terminal (plain `waiting:` lines elsewhere) naming the slowest VM."""
    from builder import status as st
    from builder.progress import interactive

    rec = recorder()
    plain = not interactive() and verbosity() >= 0
    with rec.step("status wait", label=f"waiting for fleet {fleet.name}", announce=False) as step:

        def on_poll(rows: list[st.VmStatus]) -> None:
            _say_secrets(rows)
            counts: dict[str, int] = {}
            for row in rows:
                counts[row.state] = counts.get(row.state, 0) + 1
            text = ", ".join(f"{n} {state}" for state, n in counts.items())
            slowest = st.slowest_pending(rows)
            if slowest is not None:
                row, seconds = slowest
                text += f"; slowest: {row.name} ({row.step or row.state}, {seconds:.0f}s)"
            step.update(text)
            if plain:
                click.echo(f"waiting: {text}", err=True)

        rows, finished = st.wait_status(
            session, fleet, timeout, interval, on_poll=on_poll, simulator=simulator
        )
        step.fields["finished"] = finished
    return rows, finished


@click.command(
    epilog=epilog(
        [
            "builder build examples/demo-image.yaml",
            "builder build image.yaml -q --junit build.xml --events build.jsonl --format json",
        ],
        [
            VSPHERE_ENV,
            "PACKER: the packer binary (default: packer on PATH)",
            "the secrets the spec references by {env: NAME}",
            TMPDIR_ENV,
            *COMMON_ENV,
        ],
        (RC.FAILED, RC.INVALID_INPUT, RC.ARTIFACT_REJECTED),
    )
)
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@output_option("out_dir", directory=True, help_text="Build dir (default: build/<spec name>).")
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
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JUnit XML file: one case per validator and per image-suite check (on failure too).",
)
@EVENTS
@FORMAT
def build(
    spec_file: Path,
    out_dir: Path | None,
    on_error: str,
    timeout: float,
    skip_validators: bool,
    junit_path: Path | None,
    fmt: str,
) -> None:
    """Render, validate, run Packer, publish the template, prune old ones; write DIR/manifest.json.

    -q leaves Packer's streamed output out (it is always in DIR/packer-build.log)."""
    from builder.build import BuildOptions
    from builder.build import build as run_build

    require_tmpdir(os.environ)
    options = BuildOptions(
        out_dir=out_dir or default_build_dir(spec_file),
        on_error=on_error,
        timeout=timeout,
        run_validators=not skip_validators,
        quiet=verbosity() < 0,
        junit=junit_path,
        recorder=recorder(),
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


@_fleet_command(
    "builder report examples/demo-fleet.yaml -o report.html", "builder report fleet.yaml --format json"
)
@output_option(
    "out_file", directory=False, help_text="The HTML file (default: build/<fleet name>-report.html)."
)
@FORMAT
def report(fleet_file: Path, out_file: Path | None, fmt: str) -> None:
    """Write one self-contained HTML page of the fleet's onboarding: a timeline per VM and step, the
    failed steps with their remedies, and the fleet's median and slowest per step.

    It reads the same guestinfo.arcbake.status as `builder status`; the page loads nothing (no network,
    no CDN, no script) and escapes every text the guests reported."""
    from builder import report as rp
    from builder import status as st
    from builder.fleet import load_fleet

    with _errors():
        fleet = load_fleet(fleet_file)
        with _session() as session:
            rows = st.read_status(session, fleet)
    path = out_file or Path("build") / f"{fleet_file.stem}-report.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(rp.render_html(fleet.name, rows), encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    stats = rp.step_stats(rows)
    if fmt == "json":
        _emit_json(
            {
                "ok": True,
                "report": str(path.absolute()),
                "fleet": fleet.name,
                "vms": len(rows),
                "states": {r.name: r.state for r in rows},
                "steps": [s.__dict__ for s in stats],
            }
        )
    else:
        click.echo(
            f"report of fleet {fleet.name} ({len(rows)} VMs, {len(stats)} steps timed): {path.absolute()}"
        )


COMMANDS: list[click.Command] = [build, deploy, status, report]
