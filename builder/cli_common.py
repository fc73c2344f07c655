"""What the command modules share: -v/-q, --format (errors too), --events, error exits, help epilogs.

State lives in the root click context's `meta`, so `-v`/`-q` count the same before and after the
subcommand (`builder -v build` == `builder build -v`), and `fail()` knows whether to answer in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from builder.events import NULL, EventsError, Recorder
from builder.progress import make_display
from builder.rc import RC
from firstboot.located_yaml import InputError, Issue

F = TypeVar("F", bound=Callable[..., Any])

_VERBOSE = "arcbake.verbose"
_QUIET = "arcbake.quiet"
_FORMAT = "arcbake.format"
_EVENTS = "arcbake.events"
_RECORDER = "arcbake.recorder"

VSPHERE_ENV = (
    "VSPHERE_SERVER (host or host:port), VSPHERE_USER, VSPHERE_PASSWORD; "
    "VSPHERE_INSECURE=1 skips TLS verification"
)
EXIT_CODES = {
    RC.OK: "ok",
    RC.FAILED: "the operation failed",
    RC.USAGE: "usage error",
    RC.INVALID_INPUT: "invalid spec or fleet file",
    RC.ARTIFACT_REJECTED: "a rendered artifact was rejected by a validator",
    RC.INTERRUPTED: "interrupted",
}


def _meta() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().meta if ctx is not None else {}


def configure_logging(verbosity: int) -> None:
    """-v/-q (verbosity = v - q) to a log level: WARNING by default, plain stderr lines."""
    level = max(logging.DEBUG, min(logging.CRITICAL, logging.WARNING - 10 * verbosity))
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )


def verbosity() -> int:
    """-v count minus -q count, wherever they were given."""
    meta = _meta()
    return int(meta.get(_VERBOSE, 0)) - int(meta.get(_QUIET, 0))


def _count(key: str) -> Callable[[click.Context, click.Parameter, int], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
        if value:
            meta = ctx.find_root().meta
            meta[key] = int(meta.get(key, 0)) + value
        configure_logging(verbosity())

    return callback


def verbosity_options() -> list[click.Option]:
    """`-v`/`-q` for the group and every subcommand (same meaning in both places)."""
    flags = [
        ("-v", "--verbose", _VERBOSE, "More output (repeatable; also after the subcommand)."),
        ("-q", "--quiet", _QUIET, "Less output: no progress, no streamed Packer output (repeatable)."),
    ]
    return [
        click.Option([short, long], count=True, expose_value=False, callback=_count(key), help=text)
        for short, long, key, text in flags
    ]


def _remember_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.find_root().meta[_FORMAT] = value
    return value


FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    is_eager=True,
    callback=_remember_format,
    help="Output format; with json, errors are a JSON document on stdout too.",
)


def _remember_events(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    ctx.find_root().meta[_EVENTS] = value


EVENTS = click.option(
    "--events",
    type=click.Path(dir_okay=False, path_type=Path),
    expose_value=False,
    callback=_remember_events,
    help="Append JSON Lines events (step started/finished with durations) to this file.",
)


def json_output() -> bool:
    """True when the command was asked for `--format json`."""
    return _meta().get(_FORMAT) == "json"


def recorder() -> Recorder:
    """The command's Recorder (events file + progress display), created once, closed with the context."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return NULL
    meta = ctx.find_root().meta
    existing = meta.get(_RECORDER)
    if isinstance(existing, Recorder):
        return existing
    try:
        rec = Recorder(ctx.command_path.split(" ", 1)[-1], meta.get(_EVENTS), make_display(verbosity()))
    except EventsError as exc:
        fail(str(exc), RC.USAGE)
    meta[_RECORDER] = rec
    ctx.find_root().call_on_close(rec.close)
    return rec


def fail(message: str, code: RC = RC.FAILED, issues: Sequence[Issue] = ()) -> NoReturn:
    """Report an error and exit with `code`: `error: MESSAGE` on stderr, and with --format json a
    `{"ok": false, "error": ..., "exit_code": ..., "issues": [...]}` document on stdout."""
    for issue in issues:
        click.echo(str(issue), err=True)
    click.echo(f"error: {message}", err=True)
    meta = _meta()
    rec = meta.get(_RECORDER)
    if isinstance(rec, Recorder):
        rec.error(message, int(code))
    if json_output():
        click.echo(json.dumps(error_document(message, code, issues), indent=2))
    raise click.exceptions.Exit(int(code))


def error_document(message: str, code: int, issues: Sequence[Issue] = ()) -> dict[str, Any]:
    """The JSON shape of every error (commands and usage errors alike)."""
    return {
        "ok": False,
        "error": message,
        "exit_code": int(code),
        "issues": [{"file": i.file, "line": i.line, "path": i.path, "message": i.message} for i in issues],
    }


TMPDIR_ENV = "TMPDIR: where Packer, the validators and pip write temporary files (default /tmp; writable)"


def require_tmpdir(environ: Mapping[str, str]) -> None:
    """Fail with one line (exit 1) unless the temp dir that Packer and the validators use is writable.

    Python's tempfile silently falls back to another directory; Packer (Go's os.TempDir) and the tools
    it runs do not, and fail deep inside a build with their own message. So check it up front.
    """
    path = environ.get("TMPDIR") or "/tmp"
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        fail(
            f"TMPDIR {path} is not a writable directory ({exc.strerror or type(exc).__name__}); "
            "point TMPDIR at one, or unset it to use /tmp"
        )


def fail_input(exc: InputError, what: str) -> NoReturn:
    """An invalid spec or fleet file: every problem listed, exit 3."""
    fail(f"invalid {what} ({len(exc.issues)} problem(s))", RC.INVALID_INPUT, exc.issues)


def epilog(example: str | Sequence[str], env: Sequence[str] = (), codes: Sequence[RC] = ()) -> str:
    """The end of a command's --help: examples, environment variables read, exit codes."""
    examples = [example] if isinstance(example, str) else list(example)
    parts = ["\b\nExamples:", *(f"  {e}" for e in examples)]
    if env:
        parts += ["", "\b\nEnvironment:", *(f"  {e}" for e in env)]
    parts += ["", "\b\nExit codes:"]
    parts += [f"  {int(c):<4}{EXIT_CODES[c]}" for c in sorted({RC.OK, *codes, RC.USAGE, RC.INTERRUPTED})]
    return "\n".join(parts)


COMMON_ENV = ("NO_COLOR: no colour in output (progress and colour need a terminal on stderr anyway)",)


def default_build_dir(spec: Path) -> Path:
    """`build/<spec file stem>`: where render and build write when -o is not given."""
    return Path("build") / spec.stem


def output_option(dest: str, *, directory: bool, help_text: str) -> Callable[[F], F]:
    """`-o/--output`, optional (each command has its default under build/)."""
    kind = click.Path(file_okay=not directory, dir_okay=directory, path_type=Path)
    return click.option("-o", "--output", dest, type=kind, default=None, help=help_text)
