"""What the command modules (`commands_image`, `commands_vsphere`) share: options and error exits."""

from __future__ import annotations

from typing import NoReturn

import click

from builder.rc import RC
from builder.yamlsrc import InputError

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)


def fail(message: str, code: RC = RC.FAILED) -> NoReturn:
    """`error: MESSAGE` on stderr, then exit with `code`."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(int(code))


def echo_issues(exc: InputError) -> None:
    """Every problem of an invalid input file on stderr, one `FILE:LINE: path: message` line each."""
    for issue in exc.issues:
        click.echo(str(issue), err=True)
