"""The `builder` command line: one click group; commands live in `commands_image`, `commands_vsphere` and
`commands_day2`, each module imported only when one of its commands runs (or `--help` lists them all):
`builder status` never loads Jinja2, the renderer or the validators.

Logs and progress go to stderr, results and JSON to stdout. Exit codes are `builder.rc.RC`. `-v`/`-q`
are accepted before and after the subcommand (cli_common keeps one count); `--format json` turns errors,
usage errors included, into a JSON document on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys
from itertools import pairwise

import click

from builder.cli_common import COMMON_ENV, configure_logging, epilog, error_document, verbosity_options
from builder.rc import RC


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from firstboot.about import version_text  # importlib.metadata and git: only for --version

        click.echo(version_text("builder"))
        ctx.exit(0)


# Command name -> the module whose COMMANDS list defines it (tests/builder/test_cli_lazy.py keeps this true).
COMMAND_MODULES = {
    "init": "builder.commands_image",
    "schema": "builder.commands_image",
    "validate": "builder.commands_image",
    "render": "builder.commands_image",
    "build": "builder.commands_vsphere",
    "deploy": "builder.commands_vsphere",
    "status": "builder.commands_vsphere",
    "report": "builder.commands_vsphere",
    "destroy": "builder.commands_day2",
    "rollout": "builder.commands_day2",
    "rotate": "builder.commands_day2",
    "templates": "builder.commands_day2",
}


class LazyGroup(click.Group):
    """A group that imports a command's module on first use and gives its commands -v/-q."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMAND_MODULES, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(COMMAND_MODULES[cmd_name])
            for command in module.COMMANDS:
                if command.name not in self.commands:
                    command.params.extend(verbosity_options())
                    self.add_command(command)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup,
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
