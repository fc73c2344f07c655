"""`builder build | deploy | status`: the vSphere side of the CLI."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
