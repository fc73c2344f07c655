"""`builder init | schema | validate | render`: the image spec side of the CLI."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
