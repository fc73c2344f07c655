"""The step engine: runs what is not yet done, in order, with a timeout and a retry policy per step.

Programmatic use (what the CLI does):

    from firstboot.engine import Engine, build_context
    from firstboot.sources import FileSource
    ctx = build_context(Path(root), FileSource(Path("meta.yaml")))
    result = Engine(ctx, time_scale=0.01).run(only=None)   # RunResult(ok, status)

`time_scale` multiplies every step timeout, retry deadline and backoff wait (default from the
`ARCBAKE_TIME_SCALE` environment variable, else 1.0), so tests exercise the real policy in milliseconds.
`sleep` replaces the backoff sleep (tests record the waits).

Per step: skipped when stamped for this instance id (unless `always_run`), skipped when `servers_only`
on a node that joins a cluster (agents, joining servers: Arc and Flux run once per cluster, on the
server that starts it); else run in a worker thread, bounded by `timeout_seconds` (the thread is abandoned and
`ctx.cancel` set when it hangs), TransientFailure retried by tenacity with exponential backoff and full
jitter until the step's deadline, PermanentFailure (or any other error) fails at once. Stamped only after
success. Status is reported after every transition: status.json, `guestinfo.arcbake.status` (a failed
write is logged and tolerated) and a log line on stderr (the journal). Every status carries the step
timings (start, end, attempts, outcome; the newest MAX_STEP_TIMINGS), kept across resumed runs of a clone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from firstboot import interpreter, metadata, secretstore
from firstboot.contract import KEY_STATUS, MAX_STEP_TIMINGS, State, Status, StepOutcome, StepTiming
from firstboot.sources import SourceError
from firstboot.state import LockedError, StateStore
from firstboot.step import Context, MetadataSource, PermanentFailure, StepFailure, failure_text
from firstboot.steporder import ORDER
from firstboot.steps import Step, load
from firstboot.subp import redact

LOG = logging.getLogger(__name__)

TIME_SCALE_ENV = "ARCBAKE_TIME_SCALE"
GUESTINFO_PROGRESS_SECONDS = 2.0


def default_time_scale() -> float:
    """`ARCBAKE_TIME_SCALE` (a positive float), else 1.0."""
    raw = os.environ.get(TIME_SCALE_ENV, "")
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        LOG.warning("ignoring %s=%r (not a number)", TIME_SCALE_ENV, raw)
        return 1.0
    return value if value > 0 else 1.0


def build_context(
    root: Path,
    source: MetadataSource,
    *,
    env: Mapping[str, str] | None = None,
    time_scale: float | None = None,
) -> Context:
    """A Context for `root` and `source`; config, secrets and instance id are filled by the engine."""
    return Context(
        root=root,
        source=source,
        env=dict(env if env is not None else os.environ),
        time_scale=time_scale if time_scale is not None else default_time_scale(),
    )


@dataclass(frozen=True)
class RunResult:
    """What a run ended with."""

    ok: bool
    status: Status


class _Abandoned(Exception):
    pass


class Engine:
    """Runs the steps for one Context."""

    def __init__(
        self,
        ctx: Context,
        step_list: list[Step] | None = None,
        *,
        time_scale: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        # The step modules (dns, kube, Azure clients...) load when a step has to run or be looked at:
        # a run that finds every step stamped for this instance imports none of them.
        self._steps = step_list
        self.scale = time_scale if time_scale is not None else ctx.time_scale
        self.sleep = sleep
        self.state = StateStore(ctx.root)
        self._current: str | None = None
        self._last_failure: StepFailure | None = None
        self._progress_pushed = float("-inf")
        # Start, end and attempts of every step run (bounded), carried in each status written.
        self._timings: list[StepTiming] = []
        # The generation of the secrets held for this instance, reported in every status.
        self._generation: int | None = None
        self._timings_lock = threading.Lock()
        # Steps whose `begin` this run has called and whose run it has not yet entered (firstboot.step).
        self._begun: set[str] = set()

    @property
    def steps(self) -> list[Step]:
        """The steps of this run (all of ORDER unless given), loaded on first use."""
        if self._steps is None:
            self._steps = load()
            interpreter.release_collection()  # start-up is over (firstboot.interpreter)
        return self._steps

    def _names(self) -> list[str]:
        return [s.name for s in self._steps] if self._steps is not None else list(ORDER)

    # -- status -----------------------------------------------------------------------------------
    def report(
        self,
        state: State,
        step: str | None,
        message: str,
        remedy: str | None = None,
        *,
        progress: bool = False,
    ) -> Status:
        """Write a status to status.json, guestinfo and the journal; return it.

        `progress` lines (a step's own updates) reach guestinfo at most every GUESTINFO_PROGRESS_SECONDS:
        each write is a vmware-rpctool call, and vCenter only needs to see that the step is alive.
        """
        secrets = self.ctx.secret_values()
        status = Status(
            state=state,
            step=step,
            message=redact(message, secrets),
            remedy=redact(remedy, secrets) if remedy else None,
            steps=self._timings_snapshot(),
            generation=self._generation,
        )
        line = f"{state.value}" + (f" [{step}]" if step else "") + f": {status.message}"
        if state is State.FAILED:
            LOG.error("%s; remedy: %s", line, status.remedy)
        else:
            LOG.info("%s", line)
        try:
            self.state.write_status(status)
        except OSError as exc:
            LOG.error("cannot write %s: %s", self.state.status_path, exc)
        if progress:
            now = time.monotonic()
            if now - self._progress_pushed < GUESTINFO_PROGRESS_SECONDS:
                return status
            self._progress_pushed = now
        try:
            self.ctx.source.set(KEY_STATUS, status.to_json())
        except (OSError, SourceError) as exc:
            LOG.warning("cannot write %s (tolerated): %s", KEY_STATUS, exc)
        return status

    def _timings_snapshot(self) -> list[StepTiming]:
        with self._timings_lock:
            return self._timings[-MAX_STEP_TIMINGS:]

    def _timing_start(self, step: str) -> None:
        with self._timings_lock:
            self._timings.append(StepTiming(step=step, started=datetime.now(UTC)))
            del self._timings[:-MAX_STEP_TIMINGS]

    def _timing_update(
        self, step: str, *, attempt: int | None = None, outcome: StepOutcome | None = None
    ) -> None:
        """Amend the newest timing of `step`: another attempt, or how it ended."""
        with self._timings_lock:
            for i in range(len(self._timings) - 1, -1, -1):
                entry = self._timings[i]
                if entry.step != step:
                    continue
                update: dict[str, object] = {}
                if attempt is not None:
                    update["attempts"] = max(entry.attempts, attempt)
                if outcome is not None:
                    update["outcome"] = outcome
                    update["ended"] = datetime.now(UTC)
                self._timings[i] = entry.model_copy(update=update)
                return

    def _progress(self, message: str) -> None:
        # An abandoned step must not overwrite the failure reported for it.
        if not self.ctx.cancel.is_set():
            self.report(State.RUNNING, self._current, message, progress=True)

    # -- running ----------------------------------------------------------------------------------
    def run(self, only: str | None = None) -> RunResult:
        """Run every step not yet done (or just `only`, after the always-run steps); never raises."""
        names = self._names()
        if only is not None and only not in names:
            status = self.report(
                State.FAILED, only, f"unknown step {only!r}", f"choose one of: {', '.join(names)}"
            )
            return RunResult(False, status)
        try:
            self.state.acquire()
        except (LockedError, OSError) as exc:
            return RunResult(False, Status(state=State.FAILED, message=str(exc), remedy="wait for it"))
        try:
            return self._run(only)
        finally:
            self._abandon_begun()
            self.state.release()

    def _run(self, only: str | None) -> RunResult:
        self.ctx.progress = self._progress
        if not self.ctx.instance_id:
            try:
                self.ctx.instance_id = metadata.instance_id(self.ctx.source, self.ctx.root)
            except (metadata.MetadataError, SourceError) as exc:
                status = self.report(State.FAILED, "metadata", str(exc), _metadata_remedy(exc))
                return RunResult(False, status)
        iid = self.ctx.instance_id
        self._generation = secretstore.generation(self.ctx.root, iid)
        previous = self.state.read_status()
        if previous is not None and self.state.stamped(iid):
            # A resumed run (reboot, `firstboot run` again) keeps the timings of this clone's earlier runs.
            self._timings = list(previous.steps)
        if only is None and self.state.done_instance() == iid and self._all_stamped(iid):
            self._retire_secrets(iid)  # again, in case the run that finished stopped before it did
            return RunResult(True, self.report(State.DONE, None, f"already onboarded (instance {iid})"))
        if only is None:
            self.state.clear_done()
        self.report(State.RUNNING, None, f"starting (instance {iid})")
        for step in self.steps:
            wanted = only is None or step.name == only or step.meta.always_run
            if not wanted:
                continue
            if self._joins() and step.meta.servers_only:
                LOG.info(
                    "step %s: skipped (this node joins a cluster; its first server onboards it)", step.name
                )
                continue
            if step.name != only and not step.meta.always_run and self.state.is_stamped(iid, step.name):
                LOG.info("step %s: already done for instance %s", step.name, iid)
                continue
            if only is None:
                self._begin_ready(iid, step)
            failure = self._run_step(step)
            if failure is not None:
                return RunResult(False, failure)
        if self._all_stamped(iid):
            self.state.mark_done(iid)
            self._retire_secrets(iid)
            return RunResult(True, self.report(State.DONE, None, f"onboarded (instance {iid})"))
        pending = [s.name for s in self._applicable() if not self.state.is_stamped(iid, s.name)]
        message = f"step {only} done; not yet done: {', '.join(pending)}"
        return RunResult(True, self.report(State.PENDING, only, message, "run `firstboot run`"))

    def _retire_secrets(self, iid: str) -> None:
        """Onboarding is done: keep only the generation of the secrets (see firstboot.secretstore)."""
        try:
            retired = secretstore.retire(self.ctx.root, iid)
        except (OSError, secretstore.SecretStoreError) as exc:
            LOG.warning("could not retire the secrets of instance %s (retried next run): %s", iid, exc)
            return
        if retired:
            LOG.info("onboarding done: secret values retired (%s); generation kept", ", ".join(retired))

    def _joins(self) -> bool:
        config = self.ctx.config
        return config is not None and not config.onboards_cluster

    def _applicable(self) -> list[Step]:
        return [s for s in self.steps if not (self._joins() and s.meta.servers_only)]

    def _all_stamped(self, iid: str) -> bool:
        if set(self._names()) <= set(self.state.stamped(iid)):
            return True  # every step stamped: no step module needs loading to know what applies
        if self.ctx.config is None and any(s.meta.servers_only for s in self.steps):
            # Role unknown before metadata is loaded: cannot tell what applies.
            stamped = set(self.state.stamped(iid))
            return all(s.name in stamped for s in self.steps if not s.meta.servers_only) and (
                "metadata" in stamped
            )
        return all(self.state.is_stamped(iid, s.name) for s in self._applicable())

    def _begin_ready(self, iid: str, upcoming: Step) -> None:
        """Before `upcoming` runs, begin every later step whose `begins_after` are all stamped: K3s starts
        while the connectivity and resources checks run (in the field those cross a proxy and a WAN, and
        K3s takes seconds to start whatever they find). A failing begin is logged; the step's own run
        meets it again in its turn and reports it with its remedy."""
        at = self.steps.index(upcoming)
        # Behind us in this run's loop, and stamped: run now (always-run metadata loads the config) or before.
        passed = {s.name for s in self.steps[:at] if self.state.is_stamped(iid, s.name)}
        for step in self.steps[at + 1 :]:
            if step.begin is None or step.name in self._begun or self.state.is_stamped(iid, step.name):
                continue
            if self._joins() and step.meta.servers_only:
                continue
            if not set(step.meta.begins_after) <= passed:
                continue
            self._begun.add(step.name)
            LOG.info("step %s: begun before %s (it needs only %s)", step.name, upcoming.name,
                     ", ".join(step.meta.begins_after))  # fmt: skip
            try:
                step.begin(self.ctx)
                self.ctx.begun.add(step.name)
            except Exception as exc:  # noqa: BLE001 - logged; the step's run meets and reports it
                LOG.warning("step %s: could not begin early (%s); it tries again in its turn", step.name,
                            failure_text(exc, self.ctx.secret_values()))  # fmt: skip

    def _abandon_begun(self) -> None:
        """The run ends (done, failed, interrupted) with steps begun but never run: their `abandon` undoes
        what their `begin` left that must not outlive the run (arc: az's stored sign-in)."""
        if not self._begun:
            return
        for step in self.steps:
            if step.name not in self._begun or step.abandon is None:
                continue
            try:
                step.abandon(self.ctx)
            except Exception as exc:  # noqa: BLE001 - logged: the run's own outcome is what is reported
                LOG.warning("step %s: could not undo its early start (%s)", step.name,
                            failure_text(exc, self.ctx.secret_values()))  # fmt: skip

    def _run_step(self, step: Step) -> Status | None:
        """Run one step to success (stamp, return None) or failure (report, return the status)."""
        self._current = step.name
        # Entered: its run owns whatever its begin left. (_begin_ready looks only at steps after the one
        # about to run, so it never begins this one again.)
        self._begun.discard(step.name)
        self._last_failure = None
        self.ctx.cancel = threading.Event()
        self._timing_start(step.name)
        self.report(State.RUNNING, step.name, step.meta.summary or f"running {step.name}")
        started = time.monotonic()
        timeout = step.meta.timeout_seconds * self.scale
        outcome: list[BaseException | None] = []
        worker = threading.Thread(
            target=self._attempts, args=(step, outcome), name=f"step-{step.name}", daemon=True
        )
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self.ctx.cancel.set()
            self._timing_update(step.name, outcome=StepOutcome.FAILED)
            last = self._last_failure
            if last is not None:
                # Still retrying at the timeout: the last failure says which link is broken.
                return self.report(
                    State.FAILED,
                    step.name,
                    f"{last.message} (step {step.name} gave up after {timeout:g} s)",
                    last.remedy,
                )
            return self.report(
                State.FAILED,
                step.name,
                f"step {step.name} did not finish within {timeout:g} s and was abandoned",
                f"see the journal for the last progress of {step.name}; `firstboot doctor` shows which "
                "link is broken; `firstboot run` resumes at this step",
            )
        error = outcome[0] if outcome else None
        elapsed = time.monotonic() - started
        self._timing_update(step.name, outcome=StepOutcome.DONE if error is None else StepOutcome.FAILED)
        if error is None:
            try:
                self.state.stamp(self.ctx.instance_id, step.name, elapsed)
            except OSError as exc:
                return self.report(
                    State.FAILED, step.name, f"cannot stamp {step.name}: {exc}", "check /var/lib/arcbake"
                )
            LOG.info("step %s: ok (%.2f s)", step.name, elapsed)
            # The metadata step may have taken a newer generation.
            self._generation = secretstore.generation(self.ctx.root, self.ctx.instance_id)
            return None
        if isinstance(error, StepFailure):
            return self.report(State.FAILED, step.name, error.message, error.remedy)
        LOG.debug("step %s crashed", step.name, exc_info=error)
        return self.report(
            State.FAILED,
            step.name,
            f"step {step.name} crashed: {type(error).__name__}: {error}",
            "this is a bug in firstboot; the journal has the details (run with -v)",
        )

    def _attempts(self, step: Step, outcome: list[BaseException | None]) -> None:
        # Imported here: a run whose steps are all stamped never retries anything (lean start-up).
        from tenacity import (
            RetryCallState,
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            stop_after_delay,
        )
        from tenacity.wait import wait_random_exponential

        policy = step.meta.retry

        def log_retry(state: RetryCallState) -> None:
            if self.ctx.cancel.is_set():
                return
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, StepFailure):
                self._last_failure = exc
            self._timing_update(step.name, attempt=state.attempt_number + 1)
            wait = state.next_action.sleep if state.next_action else 0.0
            message = exc.message if isinstance(exc, StepFailure) else str(exc)
            self.report(
                State.RUNNING,
                step.name,
                f"attempt {state.attempt_number} failed: {message}; retrying in {wait:.1f} s",
            )

        def cancelled_sleep(seconds: float) -> None:
            if self.ctx.cancel.is_set():
                raise _Abandoned
            self.sleep(seconds)

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, StepFailure) and e.transient),
            stop=stop_after_delay(policy.deadline_seconds * self.scale)
            | stop_after_attempt(policy.max_attempts),
            wait=wait_random_exponential(
                multiplier=policy.initial_wait * self.scale, max=policy.max_wait * self.scale
            ),
            sleep=cancelled_sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            retrying(step.run, self.ctx)
            outcome.append(None)
        except _Abandoned:
            outcome.append(PermanentFailure(f"step {step.name} abandoned", "see the journal"))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            outcome.append(exc)


def _metadata_remedy(exc: Exception) -> str:
    if isinstance(exc, SourceError):
        return "check that open-vm-tools is installed and the VM's guestinfo is readable, or pass --source"
    return "fix guestinfo.metadata (instance-id) or make /sys/class/dmi/id/product_uuid readable"
