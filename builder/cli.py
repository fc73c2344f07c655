"""The `builder` command line: one click group; commands live in `commands_image` and `commands_vsphere`.

Logs and progress go to stderr, results and JSON to stdout. Exit codes are `builder.rc.RC`.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from builder import commands_day2, commands_image, commands_vsphere
from builder.rc import RC

LOG = logging.getLogger("builder")


def configure_logging(verbose: int, quiet: int) -> None:
    """Map -v/-q counts to log levels; plain stderr lines, no colour when NO_COLOR is set."""
    level = max(logging.DEBUG, min(logging.CRITICAL, logging.WARNING - 10 * verbose + 10 * quiet))
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def color_enabled() -> bool:
    """True when colour may be used on stderr (a TTY and NO_COLOR unset)."""
    return "NO_COLOR" not in os.environ and sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less log output (repeatable).")
@click.version_option(package_name="arcbake")
def cli(verbose: int, quiet: int) -> None:
    """Bake vSphere golden templates whose clones onboard themselves to Azure Arc and Flux."""
    configure_logging(verbose, quiet)


for _command in [*commands_image.COMMANDS, *commands_vsphere.COMMANDS, *commands_day2.COMMANDS]:
    cli.add_command(_command)


def main() -> None:
    """Console script entry point: usage errors exit 2, Ctrl-C exits 130, never a traceback."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(RC.USAGE)
    except click.exceptions.Abort:
        sys.exit(RC.INTERRUPTED)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(RC.FAILED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(RC.INTERRUPTED)
    sys.exit(int(code) if isinstance(code, int) else RC.OK)
