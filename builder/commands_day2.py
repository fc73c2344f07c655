"""Day 2 commands: `builder destroy | rotate | rollout | templates`.

Each prints its plan before it changes anything; `--yes` skips the confirmation (CI); without it a
non-interactive run refuses (exit 2) rather than guess. Exit codes are `builder.rc.RC`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from builder.cli_common import EVENTS, FORMAT, fail, recorder
from builder.commands_vsphere import _errors, _session
from builder.events import Recorder
from builder.rc import RC

FLEET_ARG = click.argument("fleet_file", metavar="FLEET", type=click.Path(dir_okay=False, path_type=Path))
YES = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (CI).")


def _progress(rec: Recorder) -> Callable[[str], None]:
    """A progress callback: the line on stderr and as a `progress` event."""

    def say(line: str) -> None:
        click.echo(f"  {line}", err=True)
        rec.emit("progress", message=line)

    return say


def confirm(what: str, yes: bool) -> None:
    """Ask before acting unless `--yes`; a non-interactive run without `--yes` exits 2."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{what}: not a terminal, pass --yes to proceed without confirmation", RC.USAGE)
    if not click.confirm(f"{what}?", default=False, err=True):
        fail("cancelled, nothing was changed", RC.INTERRUPTED)


DESTROY_HELP = """Power off and delete the fleet's VMs, then each cluster's Arc connected cluster.

\b
Only VMs this fleet deployed are touched (deploy's `arcbake.fleet` mark); a template or another
fleet's VM of the same name stops the command with nothing changed. A cluster's Arc resource (with its
extensions and Flux configurations) is deleted once no VM of that cluster is left. Idempotent: run it
again after an interruption. Azure credentials: AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_TENANT_ID
(default: the fleet's arc.tenant_id) in the environment.

\b
Example:
  builder destroy examples/demo-fleet.yaml --vm edge-demo-03 --yes
  builder destroy examples/demo-fleet.yaml --keep-arc --yes

\b
Exit codes: 0 done (or nothing to do), 1 a VM or Arc delete failed or a VM was refused,
2 usage (unknown --vm, no --yes without a terminal), 3 invalid fleet file, 130 interrupted/cancelled.
"""


@click.command(help=DESTROY_HELP)
@FLEET_ARG
@click.option("--vm", "only", multiple=True, metavar="NAME", help="Only this VM (repeatable).")
@YES
@click.option("--keep-arc", is_flag=True, help="Leave Azure alone (no Azure access from here).")
@EVENTS
@FORMAT
def destroy(fleet_file: Path, only: tuple[str, ...], yes: bool, keep_arc: bool, fmt: str) -> None:
    from builder import destroy as ds
    from builder.fleet import load_fleet

    with _errors():
        fleet = load_fleet(fleet_file)
        with _session() as session:
            try:
                the_plan = ds.plan(session, fleet, only, keep_arc=keep_arc)
            except ValueError as exc:
                fail(str(exc), RC.USAGE)
            for line in the_plan.lines():
                click.echo(line, err=fmt == "json")
            if keep_arc:
                click.echo("--keep-arc: the Arc resources in Azure are left alone", err=True)
            acting = [s for s in the_plan.vms if s.action == "delete"] + [
                a for a in the_plan.arc if a.action == "delete"
            ]
            the_plan.check_refused()
            if acting:
                confirm(f"destroy {len(acting)} object(s) of fleet {fleet.name}", yes)
            tenant = next((v.config.arc.tenant_id for v in fleet.vms if v.config.arc), None)

            rec = recorder()
            say = _progress(rec)
            with rec.step("destroy", label=f"destroy fleet {fleet.name}", announce=False) as running:
                ok = ds.apply(the_plan, os.environ, default_tenant=tenant, progress=say)
                if not ok:
                    running.fail("a VM or Arc delete failed")
    if fmt == "json":
        click.echo(json.dumps({"ok": ok, **the_plan.as_dict()}, indent=2))
    elif not acting:
        click.echo(f"fleet {fleet.name}: nothing to destroy")
    if not ok:
        raise click.exceptions.Exit(int(RC.FAILED))


TEMPLATES_HELP = """The lineage of the image's published templates, newest first.

\b
For each template whose name matches the spec's vsphere.template_name: name, build time, K3s version,
spec sha256 (16 hex; `*` marks the spec as it is now) and how many VMs builder deploy cloned from it,
read from what builder build recorded on the template.

\b
Example:
  builder templates examples/rocky9.yaml --format json

\b
Exit codes: 0 listed (also when none is published), 1 vSphere failed, 3 invalid spec, 130 interrupted.
"""


@click.command(help=TEMPLATES_HELP)
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@FORMAT
def templates(spec_file: Path, fmt: str) -> None:
    from builder import lineage
    from builder.spec import load_spec

    with _errors():
        spec = load_spec(spec_file)
        with _session() as session:
            rows = lineage.lineage(session, spec)
    if fmt == "json":
        click.echo(json.dumps({"spec": str(spec_file), "templates": [r.as_dict() for r in rows]}, indent=2))
    elif rows:
        click.echo(lineage.table(rows))
    else:
        click.echo(f"no published template matches {spec.vsphere.template_name!r}")


ROLLOUT_HELP = """Move the fleet onto a newer template, one VM at a time, keeping it serving.

\b
A VM already on the template whose fleet file entry changed is replaced too (what deploy --replace
refuses inside a live cluster).

\b
Per cluster: agents, then joining servers, then the initialising server. Each VM: clone NAME.rollout
from the template (powered off), power the old VM off and the replacement on, wait for it to report
done (an agent: also Ready in its server's status), delete the old VM, rename the replacement. A failure
powers the old VM back on and stops. A single-server cluster is refused unless --rebuild-cluster
(server first, its Arc connected cluster deleted and connected anew; needs AZURE_CLIENT_ID,
AZURE_CLIENT_SECRET, AZURE_TENANT_ID). Resumable: run it again after an interruption.

\b
Example:
  builder rollout examples/demo-fleet.yaml --template demo-rocky9-k3s-202602011200 --dry-run
  builder rollout examples/demo-fleet.yaml --template 'demo-{os}-k3s-{timestamp}' --yes

\b
Exit codes: 0 rolled out (or nothing to do, or --dry-run), 1 a replacement failed or timed out (the
old VM serves again) or the plan was refused (nothing changed), 2 usage (no --yes without a terminal),
3 invalid fleet file or unset secret, 130 interrupted (run it again to resume).
"""


@click.command(help=ROLLOUT_HELP)
@FLEET_ARG
@click.option("--template", "template", required=True, metavar="NAME", help="Target template (or pattern).")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@YES
@click.option("--rebuild-cluster", is_flag=True, help="Allow rebuilding single-server clusters.")
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=3600.0,
    show_default=True,
    help="Seconds each replacement may take to report done.",
)
@click.option(
    "--interval", type=click.FloatRange(0.01), default=10.0, show_default=True, help="Poll interval."
)
@EVENTS
@FORMAT
def rollout(
    fleet_file: Path,
    template: str,
    dry_run: bool,
    yes: bool,
    rebuild_cluster: bool,
    timeout: float,
    interval: float,
    fmt: str,
) -> None:
    from builder import rollout as ro
    from builder.fleet import load_fleet

    with _errors():
        fleet = load_fleet(fleet_file)
        with _session() as session:
            the_plan = ro.plan(session, fleet, template, rebuild_cluster=rebuild_cluster)
            for line in the_plan.lines():
                click.echo(line, err=fmt == "json" or not dry_run)
            todo = [s for s in the_plan.steps if s.action in ("replace", "rebuild")]
            if dry_run:
                if fmt == "json":
                    click.echo(json.dumps({"ok": not the_plan.refused, **the_plan.as_dict()}, indent=2))
                raise click.exceptions.Exit(int(RC.FAILED if the_plan.refused else RC.OK))
            if todo and not the_plan.refused:
                confirm(f"roll {len(todo)} VM(s) of fleet {fleet.name} onto {the_plan.template}", yes)

            rec = recorder()
            say = _progress(rec)
            opts = ro.Options(rebuild_cluster, timeout, interval, say)
            with rec.step("rollout", label=f"roll fleet {fleet.name} onto {the_plan.template}") as running:
                ok = ro.run(session, fleet, the_plan, os.environ, opts)
                if not ok:
                    running.fail("a replacement failed or timed out")
    if fmt == "json":
        click.echo(json.dumps({"ok": ok, **the_plan.as_dict()}, indent=2))
    for step in the_plan.steps:
        if step.done.startswith("failed"):
            click.echo(f"error: {step.done.removeprefix('failed: ')}", err=True)
    if not ok:
        raise click.exceptions.Exit(int(RC.FAILED))
    if fmt == "text":
        click.echo(f"fleet {fleet.name}: {len(todo)} VM(s) rolled onto {the_plan.template}")


ROTATE_HELP = """Write a newer generation of secrets into the fleet's clones.

\b
Rotate the value at its source (a new service principal secret, Git token, ...), export it under the
name the fleet's secrets reference, then run this: every VM the fleet owns gets the same new generation
(the fleet's highest + 1) in guestinfo.arcbake.secrets. Each clone takes it with `firstboot rotate`
(arcbake-rotate.timer, within about 10 minutes, or at its next boot), signs in with it, updates the Flux
Git credentials, reports the generation (builder status, column GEN) and discards the old values.

\b
Example:
  export ARC_SP_SECRET="$NEW_SECRET"
  builder rotate examples/demo-fleet.yaml --yes

\b
Exit codes: 0 written, 1 a write failed or a VM is missing, 2 usage (no --yes without a terminal),
3 invalid fleet file or unset secret, 130 interrupted.
"""


@click.command(help=ROTATE_HELP)
@FLEET_ARG
@YES
@EVENTS
@FORMAT
def rotate(fleet_file: Path, yes: bool, fmt: str) -> None:
    from builder import rotate as rt
    from builder.fleet import load_fleet, resolve_secrets

    with _errors():
        fleet = load_fleet(fleet_file)
        resolve_secrets(fleet, os.environ)  # unset references: exit 3 before vSphere is asked anything
        with _session() as session:
            the_plan = rt.plan(session, fleet)
            for line in the_plan.lines():
                click.echo(line, err=True)
            targets = [v for v in the_plan.vms if v.action == "write"]
            if targets:
                confirm(f"write secrets generation {the_plan.generation} into {len(targets)} VM(s)", yes)
            rec = recorder()
            with rec.step("rotate", label=f"rotate secrets of fleet {fleet.name}", announce=False) as running:
                ok = rt.apply(the_plan, fleet, os.environ, _progress(rec))
                if not ok:
                    running.fail("a secrets write failed")
    missing = [v.name for v in the_plan.vms if v.action == "missing"]
    if fmt == "json":
        click.echo(json.dumps({"ok": ok and not missing, **the_plan.as_dict()}, indent=2))
    else:
        click.echo(
            f"fleet {fleet.name}: secrets generation {the_plan.generation} written to {len(targets)} VM(s)"
        )
    if missing:
        click.echo(f"error: not deployed, not rotated: {', '.join(missing)}", err=True)
    if not ok or missing:
        raise click.exceptions.Exit(int(RC.FAILED))


COMMANDS: list[click.Command] = [destroy, rollout, rotate, templates]
