"""The `builder` command line: one click group; commands live in `commands_image` and `commands_vsphere`.

Logs and progress go to stderr, results and JSON to stdout. Exit codes are `builder.rc.RC`. `-v`/`-q`
are accepted before and after the subcommand (cli_common keeps one count); `--format json` turns errors,
usage errors included, into a JSON document on stdout.
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise

import click

from builder import commands_day2, commands_image, commands_vsphere
from builder.cli_common import COMMON_ENV, configure_logging, epilog, error_document, verbosity_options
from builder.rc import RC
from firstboot.about import version_text


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text("builder"))
        ctx.exit(0)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=epilog(
        [
            "builder init image.yaml && builder validate image.yaml",
            "builder build image.yaml -q --junit out.xml",
        ],
        COMMON_ENV,
        (RC.FAILED, RC.INVALID_INPUT, RC.ARTIFACT_REJECTED),
    ),
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version, the git commit of the build and the Python, then exit.",
)
def cli() -> None:
    """Bake vSphere golden templates whose clones onboard themselves to Azure Arc and Flux."""
    configure_logging(0)


cli.params.extend(verbosity_options())
for _command in [*commands_image.COMMANDS, *commands_vsphere.COMMANDS, *commands_day2.COMMANDS]:
    _command.params.extend(verbosity_options())
    cli.add_command(_command)


def _wants_json(argv: list[str]) -> bool:
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairwise(argv))


def main() -> None:
    """Console script entry point: usage errors exit 2, Ctrl-C exits 130, never a traceback."""
    argv = sys.argv[1:]
    try:
        code = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        if _wants_json(argv):
            click.echo(json.dumps(error_document(exc.format_message(), RC.USAGE), indent=2))
        sys.exit(RC.USAGE)
    except click.exceptions.Abort:
        sys.exit(RC.INTERRUPTED)
    except click.exceptions.ClickException as exc:
        exc.show()
        if _wants_json(argv):
            click.echo(json.dumps(error_document(exc.format_message(), RC.FAILED), indent=2))
        sys.exit(RC.FAILED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(RC.INTERRUPTED)
    sys.exit(int(code) if isinstance(code, int) else RC.OK)
