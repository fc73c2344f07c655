"""doctor: every step's read-only `check`, run in parallel, one result per link of the chain.

The checks are independent reads (time sync, DNS, endpoints, k3s, Arc, Flux), so they run at once in a
thread pool, each bounded by its step's timeout (at most `MAX_CHECK_SECONDS`); a check that cannot tell
yet (its prerequisites are missing) reports `conclusive=False`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from firstboot import metadata, proxyenv, stackchecks, steps
from firstboot.sources import SourceError
from firstboot.state import StateStore
from firstboot.step import CheckResult, Context, StepFailure

LOG = logging.getLogger(__name__)

MAX_CHECK_SECONDS = 30.0


@dataclass(frozen=True)
class Finding:
    """One line of doctor's report."""

    step: str
    result: CheckResult

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        r = self.result
        return {
            "step": self.step,
            "ok": r.ok,
            "conclusive": r.conclusive,
            "message": r.message,
            "remedy": r.remedy,
        }


def prepare(ctx: Context) -> None:
    """Load config and secrets into `ctx` without writing anything (falls back to the cached config)."""
    try:
        ctx.config = metadata.load_config(ctx.source)
    except (metadata.MetadataError, SourceError) as exc:
        LOG.debug("doctor: live config unavailable (%s); trying the cached copy", exc)
        ctx.config = metadata.cached_config(ctx.root) or ctx.config
    if not ctx.instance_id:
        try:
            ctx.instance_id = metadata.instance_id(ctx.source, ctx.root)
        except (metadata.MetadataError, SourceError) as exc:
            LOG.debug("doctor: instance id unavailable (%s); using the onboarded one", exc)
            ctx.instance_id = StateStore(ctx.root).done_instance() or ""
    try:
        ctx.secrets = metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=False)
    except (metadata.MetadataError, SourceError) as exc:
        LOG.debug("doctor: secrets unavailable: %s", exc)
    if ctx.config is not None:
        ctx.env = {**ctx.env, **proxyenv.proxy_environment(ctx.config.proxy, ctx.config.k3s)}


def _guarded(
    name: str, check: Callable[[Context], CheckResult], needs_config: bool, ctx: Context
) -> CheckResult:
    if needs_config and ctx.config is None:
        return CheckResult(
            False, "not checked: no valid metadata", "fix the metadata first", conclusive=False
        )
    try:
        return check(ctx)
    except StepFailure as exc:
        return CheckResult(False, exc.message, exc.remedy)
    except Exception as exc:  # one broken check must not hide the others
        LOG.debug("check %s crashed", name, exc_info=exc)
        return CheckResult(
            False, f"check crashed: {type(exc).__name__}: {exc}", "report this bug (run with -v)"
        )


def diagnose(
    ctx: Context,
    step_list: list[steps.Step] | None = None,
    stack: Sequence[stackchecks.StackCheck] | None = None,
) -> list[Finding]:
    """Run every check in parallel: the steps' checks in step order, then the rest of the stack
    (`firstboot.stackchecks`: timedatectl, chronyd, firewall, CoreDNS, Arc agents' logs, Flux extension)."""
    if stack is None:  # everything by default; an explicit step list asks for just those steps
        stack = stackchecks.CHECKS if step_list is None else ()
    step_list = step_list if step_list is not None else steps.load()
    prepare(ctx)
    findings: list[Finding] = []
    jobs: list[tuple[str, Callable[[], CheckResult], float]] = [
        (s.name, partial(_guarded, s.name, s.check, s.name != "metadata", ctx),
         s.meta.timeout_seconds * ctx.time_scale)
        for s in step_list
    ]  # fmt: skip
    jobs += [
        (c.name, partial(_guarded, c.name, c.check, c.needs_config, ctx), MAX_CHECK_SECONDS) for c in stack
    ]
    pool = cf.ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="check")
    try:
        futures = [(name, limit, pool.submit(job)) for name, job, limit in jobs]
        for name, limit, future in futures:
            limit = min(limit, MAX_CHECK_SECONDS)
            try:
                result = future.result(timeout=limit)
            except cf.TimeoutError:
                result = CheckResult(
                    False,
                    f"check did not answer within {limit:g} s",
                    f"run `firstboot doctor -v`; {name} hangs",
                )
            findings.append(Finding(name, result))
    finally:
        # Hung checks are abandoned, not waited for.
        pool.shutdown(wait=False, cancel_futures=True)
    return findings
