"""`firstboot run | status | rotate | doctor` (argparse: the guest gets no click/rich).

Exit codes (ARCHITECTURE.md): run 0 done, 1 failed; status 0 done, 1 failed, 2 not finished; doctor 0
healthy, 1 problems found; 2 for usage errors (argparse). Logs go to stderr (the journal), results to stdout.

Start-up stays lean: each command imports what it uses when it runs. `status` reads status.json with the
standard library (`firstboot.statusview`) and loads the pydantic models only for a file it cannot vouch
for; `run` loads the step modules only for steps it has to run or check (`firstboot.engine`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firstboot import interpreter, statusview
from firstboot.steporder import ORDER

if TYPE_CHECKING:
    from firstboot.contract import Status

LOGGER = "firstboot"

STATUS_POLL_SECONDS = 0.5
# sysexits.h EX_TEMPFAIL: `rotate` found another firstboot run holding the lock; the timer retries.
EX_TEMPFAIL = 75


class _Version(argparse.Action):
    """`--version`, computed only when asked (it may run git; every other start-up stays lean)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from firstboot import about

        print(about.version_text("firstboot"))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    common.add_argument("-q", "--quiet", action="count", default=0, help="less log output (repeatable)")
    common.add_argument("--root", type=Path, default=Path("/"), help="take every file path under DIR (tests)")

    parser = argparse.ArgumentParser(
        prog="firstboot",
        description="first-boot onboarding of an arcbake clone",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(
            "firstboot status --wait --timeout 600",
            "0 ok (run: done; status: done; doctor: healthy), 1 failed or problems found, "
            "2 status: not finished / usage error, 130 interrupted",
        ),
    )
    parser.add_argument("--version", action=_Version, help="show version, git commit and Python, then exit")
    # The same -v/-q before the subcommand; counted with the subcommand's own (argparse would let the
    # subparser's default overwrite a shared dest, so these have their own).
    parser.add_argument(
        "-v", "--verbose", dest="top_verbose", action="count", default=0, help=argparse.SUPPRESS
    )
    parser.add_argument("-q", "--quiet", dest="top_quiet", action="count", default=0, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = _subcommand(
        sub,
        common,
        "run",
        "run the onboarding steps not yet done",
        "firstboot run --source file:/tmp/guestinfo.yaml --root /tmp/guest",
        "0 done, 1 failed",
    )
    run.add_argument("--source", default="auto", help="auto | guestinfo | env | file:PATH (default auto)")
    run.add_argument("--only", choices=ORDER, help="run just this step (after metadata)")

    status = _subcommand(
        sub,
        common,
        "status",
        "show the onboarding status",
        "firstboot status --format json",
        "0 done, 1 failed, 2 not finished",
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    status.add_argument("--wait", action="store_true", help="wait until done or failed")
    status.add_argument("--timeout", type=float, default=1800.0, help="with --wait: give up after S seconds")

    rot = _subcommand(
        sub,
        common,
        "rotate",
        "take a newer generation of secrets written by `builder rotate` (arcbake-rotate.timer runs it)",
        "firstboot rotate --source file:/tmp/guestinfo.yaml --root /tmp/guest",
        "0 a newer generation taken, or none to take; 1 the newer generation was refused (the old one "
        "stays in force, the status says why) or the metadata is unusable; 75 another firstboot run holds "
        "the lock (the timer tries again)",
    )
    rot.add_argument("--source", default="auto", help="auto | guestinfo | env | file:PATH (default auto)")

    doc = _subcommand(
        sub,
        common,
        "doctor",
        "read-only diagnosis of every link",
        "firstboot doctor --format json\n  firstboot doctor --bundle /root/arcbake-bundle.tar.gz",
        "0 healthy, 1 problems found (or the bundle could not be written)",
    )
    doc.add_argument("--format", choices=("text", "json"), default="text")
    doc.add_argument(
        "--bundle",
        type=Path,
        metavar="PATH",
        help="also write a support tarball (status, doctor JSON, journals, pod logs, configs; secret "
        "values redacted; mode 0600)",
    )
    doc.add_argument("--source", default="auto", help="auto | guestinfo | env | file:PATH (default auto)")
    return parser


ENVIRONMENT = (
    "ARCBAKE_TIME_SCALE (multiplies step timeouts and retry waits; tests), "
    "VMX_GUESTINFO_* (with --source env), HTTPS_PROXY/NO_PROXY as set by the proxy step"
)


def _epilog(example: str, codes: str) -> str:
    return f"example:\n  {example}\n\nenvironment:\n  {ENVIRONMENT}\n\nexit codes:\n  {codes}"


def _subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    example: str,
    codes: str,
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example, the environment it reads and its exit codes."""
    return sub.add_parser(
        name,
        parents=[common],
        help=summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(example, codes),
    )


def _logging(verbose: int, quiet: int) -> None:
    import logging

    level = min(max(logging.INFO + 10 * (quiet - verbose), logging.DEBUG), logging.CRITICAL)
    handler = logging.StreamHandler(sys.stderr)
    # Plain lines: journald adds time, host and SyslogIdentifier.
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _status_text(status: Status) -> str:
    return statusview.text(status.model_dump(mode="json"))


def cmd_run(args: argparse.Namespace) -> int:
    """`firstboot run`."""
    interpreter.hold_collection()  # until the engine has loaded the step modules (or the run ends)
    try:
        return _run(args)
    finally:
        interpreter.release_collection()


def _run(args: argparse.Namespace) -> int:
    import logging

    from firstboot.contract import State, Status
    from firstboot.engine import Engine, build_context
    from firstboot.sources import SourceError, make_source
    from firstboot.state import StateStore

    try:
        source = make_source(args.source)
    except SourceError as exc:
        logging.getLogger(LOGGER).error("metadata source: %s", exc)
        status = Status(
            state=State.FAILED, step="metadata", message=str(exc), remedy="choose another --source"
        )
        StateStore(args.root).write_status(status)
        print(_status_text(status))
        return 1
    ctx = build_context(args.root, source)
    result = Engine(ctx).run(only=args.only)
    print(_status_text(result.status))
    return 0 if result.ok else 1


def _read_status(root: Path) -> tuple[str, dict[str, Any]]:
    """(JSON text, data) of the current status: status.json as it is when it has the shape firstboot
    writes (no pydantic), else what the model makes of it (pending when missing or invalid)."""
    lean = statusview.load(root)
    if lean is not None:
        return lean
    from firstboot.contract import State, Status
    from firstboot.state import StateStore

    status = StateStore(root).read_status() or Status(
        state=State.PENDING, message="firstboot has not run yet"
    )
    return status.to_json(), status.model_dump(mode="json")


def cmd_status(args: argparse.Namespace) -> int:
    """`firstboot status`."""
    deadline = time.monotonic() + args.timeout
    while True:
        raw, data = _read_status(args.root)
        finished = data["state"] in statusview.EXIT_CODES
        if finished or not args.wait or time.monotonic() >= deadline:
            break
        time.sleep(STATUS_POLL_SECONDS)
    print(raw if args.format == "json" else statusview.text(data))
    return statusview.EXIT_CODES.get(data["state"], statusview.NOT_FINISHED)


def cmd_rotate(args: argparse.Namespace) -> int:
    """`firstboot rotate`."""
    import logging

    from firstboot import metadata, rotate, secretstore
    from firstboot.engine import build_context
    from firstboot.sources import SourceError, make_source
    from firstboot.state import LockedError, StateStore

    log = logging.getLogger(LOGGER)
    try:
        source = make_source(args.source)
    except SourceError as exc:
        log.error("metadata source: %s", exc)
        return 1
    store = StateStore(args.root)
    try:
        store.acquire()
    except LockedError as exc:
        log.info("%s: not rotating now", exc)
        return EX_TEMPFAIL
    try:
        result = rotate.rotate(build_context(args.root, source))
    except (metadata.MetadataError, secretstore.SecretStoreError, SourceError) as exc:
        log.error("rotate: %s", exc)
        return 1
    finally:
        store.release()
    print(result.message + (f"\nremedy: {result.remedy}" if result.remedy else ""))
    return 0 if result.ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """`firstboot doctor`."""
    import json
    import logging

    from firstboot import doctor
    from firstboot.engine import build_context
    from firstboot.sources import SourceError, make_source

    try:
        source = make_source(args.source)
    except SourceError as exc:
        logging.getLogger(LOGGER).warning("metadata source: %s (using the cached config)", exc)
        from firstboot.sources import EnvSource

        source = EnvSource({})
    ctx = build_context(args.root, source)
    findings = doctor.diagnose(ctx)
    report = {"healthy": all(f.result.ok for f in findings), "checks": [f.as_dict() for f in findings]}
    written = None
    if args.bundle is not None:
        from firstboot import bundle

        try:
            written = bundle.write(args.bundle, bundle.collect(ctx, report), bundle.secret_values(ctx))
        except OSError as exc:
            reason = exc.strerror or exc
            logging.getLogger(LOGGER).error("cannot write the bundle %s: %s", args.bundle, reason)
            return 1
    if args.format == "json":
        print(json.dumps({**report, "bundle": str(written) if written else None}, indent=2))
    else:
        width = max((len(f.step) for f in findings), default=8)
        for f in findings:
            r = f.result
            label = "ok" if r.ok else ("PROBLEM" if r.conclusive else "UNKNOWN")
            print(f"{label:<8} {f.step:<{width}}  {r.message}")
            if not r.ok and r.remedy:
                print(f"{'':<8} {'':<{width}}  remedy: {r.remedy}")
        if written:
            print(f"bundle   {written}")
    return 0 if report["healthy"] else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `firstboot` console script."""
    args = _parser().parse_args(argv)
    if args.command != "status":  # status logs nothing: it skips the logging set-up (lean start-up)
        _logging(args.verbose + args.top_verbose, args.quiet + args.top_quiet)
    handlers = {"run": cmd_run, "status": cmd_status, "rotate": cmd_rotate, "doctor": cmd_doctor}
    try:
        code = handlers[args.command](args)
    except KeyboardInterrupt:
        code = 130
    if argv is None and args.command == "run":
        # The console script's run (on the onboarding's critical path): no interpreter teardown.
        interpreter.exit_at_once(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
