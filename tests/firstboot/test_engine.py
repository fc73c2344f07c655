"""The step engine: order, stamps, resume, timeout, retry policy, status transitions, roles, --only."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.guestinfo import DictSource, onboarding_config

from firstboot.contract import (
    KEY_METADATA,
    KEY_STATUS,
    MAX_STEP_TIMINGS,
    OnboardingConfig,
    OnboardingSecrets,
    State,
)
from firstboot.engine import Engine, build_context
from firstboot.state import StateStore
from firstboot.step import (
    CheckResult,
    Context,
    PermanentFailure,
    RetryPolicy,
    StepMeta,
    TransientFailure,
)
from firstboot.steps import Step

FAST = RetryPolicy(deadline_seconds=5, initial_wait=0.01, max_wait=0.05, max_attempts=10)


def ok_check(ctx: Context) -> CheckResult:
    return CheckResult(True, "fine")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(
        self,
        name: str,
        action: Callable[[Context], None] | None = None,
        *,
        timeout: float = 5,
        retry: RetryPolicy = FAST,
        servers_only: bool = False,
        always_run: bool = False,
    ) -> Step:
        def run(ctx: Context) -> None:
            self.calls.append(name)
            if action is not None:
                action(ctx)

        meta = StepMeta(
            name=name, timeout_seconds=timeout, retry=retry, servers_only=servers_only, always_run=always_run
        )
        return Step(meta=meta, check=ok_check, run=run)


def load_config(role: str = "server") -> Callable[[Context], None]:
    def action(ctx: Context) -> None:
        ctx.config = OnboardingConfig.model_validate(onboarding_config(role=role))
        ctx.secrets = OnboardingSecrets.model_validate({"sp_secret": "very-secret-value-1"})

    return action


def make(tmp_path: Path, iid: str = "vm-1", source: DictSource | None = None) -> tuple[Context, DictSource]:
    src = source or DictSource()
    src.data[KEY_METADATA] = json.dumps({"instance-id": iid})
    return build_context(tmp_path, src, env={}, time_scale=1.0), src


def statuses(src: DictSource) -> list[tuple[str, str | None]]:
    out = []
    for key, value in src.writes:
        if key == KEY_STATUS:
            data = json.loads(value)
            out.append((data["state"], data["step"]))
    return out


def test_runs_in_order_stamps_and_reports(tmp_path: Path) -> None:
    rec = Recorder()
    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("a"), rec.step("b")]
    ctx, src = make(tmp_path)
    result = Engine(ctx, steps).run()
    assert result.ok and result.status.state is State.DONE
    assert rec.calls == ["metadata", "a", "b"]
    store = StateStore(tmp_path)
    assert store.stamped("vm-1") == ["a", "b", "metadata"]
    assert store.done_instance() == "vm-1"
    assert store.read_status() is not None and store.read_status().state is State.DONE  # type: ignore[union-attr]
    seq = statuses(src)
    assert seq[0] == ("running", None)
    assert ("running", "a") in seq and ("running", "b") in seq
    assert seq.index(("running", "a")) < seq.index(("running", "b"))
    assert seq[-1] == ("done", None)


Hook = Callable[[Context], None] | None


def early_chain(rec: Recorder, broken: dict[str, bool], **early: tuple[Hook, Hook]) -> list[Step]:
    """metadata, a, a check failing while `broken["check"]`, then steps that begin after a: name=(begin,
    abandon)."""

    def check(ctx: Context) -> None:
        if broken["check"]:
            raise PermanentFailure("the check failed", "fix the link")

    def step(name: str, begin: Hook, abandon: Hook) -> Step:
        meta = StepMeta(name=name, begins_after=("a",), retry=FAST)
        return Step(meta=meta, check=ok_check, run=rec.step(name).run, begin=begin, abandon=abandon)

    head = [rec.step("metadata", load_config(), always_run=True), rec.step("a"), rec.step("check", check)]
    return head + [step(name, begin, abandon) for name, (begin, abandon) in early.items()]


def test_a_step_begins_once_what_it_needs_is_stamped_and_runs_in_its_turn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """K3s's start (k3s `begin`) needs metadata..proxy, not connectivity and resources: it begins before
    them. A failure in between is still theirs; the next run begins the step again; `--only` never does;
    a failing begin is logged (redacted) and the step's run does the work in its turn."""
    rec = Recorder()
    broken = {"check": True}

    def begin(ctx: Context) -> None:
        rec.calls.append("begin k")

    def failing_begin(ctx: Context) -> None:
        rec.calls.append("begin j")
        raise TransientFailure("not yet very-secret-value-1", "j retries")

    steps = early_chain(rec, broken, k=(begin, None), j=(failing_begin, None))
    ctx, _ = make(tmp_path)
    first = Engine(ctx, steps).run()
    assert not first.ok and first.status.step == "check" and first.status.remedy == "fix the link"
    assert rec.calls == ["metadata", "a", "begin k", "begin j", "check"]
    assert not StateStore(tmp_path).is_stamped("vm-1", "k")
    rec.calls.clear()
    ctx, _ = make(tmp_path)
    assert not Engine(ctx, steps).run(only="check").ok
    assert rec.calls == ["metadata", "check"]  # --only: nothing begins
    broken["check"] = False
    rec.calls.clear()
    ctx, _ = make(tmp_path)
    assert Engine(ctx, steps).run().ok
    assert rec.calls == ["metadata", "begin k", "begin j", "check", "k", "j"]
    assert ctx.begun == {"k"}  # recorded for k's run; j's failed begin is not
    assert "step j: could not begin early (not yet ***); it tries again in its turn" in caplog.text
    assert "very-secret-value-1" not in caplog.text


def test_a_begun_step_the_run_never_reaches_is_abandoned_once_and_a_step_that_ran_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """arc signs az in beside K3s's start: when the run fails before arc runs, arc's `abandon` signs out.
    A step whose run was entered (failed or not) cleans up itself; a failing abandon is logged, redacted,
    and does not change the run's outcome."""
    rec = Recorder()
    broken = {"check": True}

    def begin(ctx: Context) -> None:
        rec.calls.append("begin")

    def abandon(ctx: Context) -> None:
        rec.calls.append("abandon k")

    def failing_abandon(ctx: Context) -> None:
        rec.calls.append("abandon j")
        raise OSError("cannot remove very-secret-value-1")

    steps = early_chain(rec, broken, k=(begin, abandon), j=(begin, failing_abandon))
    ctx, _ = make(tmp_path)
    first = Engine(ctx, steps).run()
    assert not first.ok and first.status.step == "check" and first.status.remedy == "fix the link"
    assert rec.calls == ["metadata", "a", "begin", "begin", "check", "abandon k", "abandon j"]
    assert "step j: could not undo its early start (OSError: cannot remove ***)" in caplog.text
    assert "very-secret-value-1" not in caplog.text
    broken["check"] = False
    rec.calls.clear()
    ctx, _ = make(tmp_path)
    assert Engine(ctx, steps).run().ok
    assert rec.calls == ["metadata", "begin", "begin", "check", "k", "j"]  # both ran: nothing abandoned


def test_resume_after_failure_and_new_instance_starts_afresh(tmp_path: Path) -> None:
    rec = Recorder()
    broken = {"b": True}

    def b(ctx: Context) -> None:
        if broken["b"]:
            raise PermanentFailure("b is broken", "fix b")

    steps = [
        rec.step("metadata", load_config(), always_run=True),
        rec.step("a"),
        rec.step("b", b),
        rec.step("c"),
    ]
    ctx, _ = make(tmp_path)
    first = Engine(ctx, steps).run()
    assert not first.ok and first.status.step == "b" and first.status.remedy == "fix b"
    assert rec.calls == ["metadata", "a", "b"]
    assert not (tmp_path / "var/lib/arcbake/done").exists()
    broken["b"] = False
    rec.calls.clear()
    ctx, _ = make(tmp_path)
    assert Engine(ctx, steps).run().ok
    assert rec.calls == ["metadata", "b", "c"]
    # Already done: nothing but the always-run step runs... and not even that.
    rec.calls.clear()
    ctx, _src = make(tmp_path)
    assert Engine(ctx, steps).run().ok
    assert rec.calls == []
    # A new clone (new instance id) starts afresh.
    ctx, _ = make(tmp_path, iid="vm-2")
    assert Engine(ctx, steps).run().ok
    assert rec.calls == ["metadata", "a", "b", "c"]


def test_hanging_step_is_abandoned_at_its_timeout(tmp_path: Path) -> None:
    rec = Recorder()
    seen_cancel: list[bool] = []

    def hang(ctx: Context) -> None:
        seen_cancel.append(ctx.cancel.wait(10))

    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("slow", hang, timeout=0.3)]
    ctx, _ = make(tmp_path)
    started = time.monotonic()
    result = Engine(ctx, steps).run()
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.status.step == "slow"
    assert "did not finish within 0.3 s" in result.status.message
    assert elapsed < 3
    assert not StateStore(tmp_path).is_stamped("vm-1", "slow")
    deadline = time.monotonic() + 2
    while not seen_cancel and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen_cancel == [True]


def test_time_scale_shrinks_timeouts(tmp_path: Path) -> None:
    rec = Recorder()
    steps = [rec.step("hang", lambda ctx: time.sleep(1.0), timeout=100)]
    ctx, _ = make(tmp_path)
    started = time.monotonic()
    result = Engine(ctx, steps, time_scale=0.002).run()
    assert not result.ok and "did not finish within 0.2 s" in result.status.message
    assert time.monotonic() - started < 1.0


def test_transient_failures_retried_with_backoff_then_succeed(tmp_path: Path) -> None:
    rec = Recorder()
    attempts = {"n": 0}

    def flaky(ctx: Context) -> None:
        attempts["n"] += 1
        if attempts["n"] < 4:
            raise TransientFailure(f"not yet ({attempts['n']})", "wait")

    waits: list[float] = []
    policy = RetryPolicy(deadline_seconds=60, initial_wait=1, max_wait=4, max_attempts=10)
    steps = [rec.step("flaky", flaky, retry=policy, timeout=60)]
    ctx, src = make(tmp_path)
    result = Engine(ctx, steps, sleep=waits.append).run()
    assert result.ok
    assert attempts["n"] == 4
    assert len(waits) == 3
    # Full jitter: each wait in [0, min(max_wait, initial * 2**n)].
    for n, wait in enumerate(waits):
        assert 0 <= wait <= min(4, 1 * 2 ** (n + 1))
    retry_lines = [json.loads(v)["message"] for k, v in src.writes if k == KEY_STATUS and "retrying" in v]
    assert len(retry_lines) == 3 and "not yet (1)" in retry_lines[0]


def test_transient_failures_stop_at_the_deadline(tmp_path: Path) -> None:
    rec = Recorder()
    attempts = {"n": 0}

    def never(ctx: Context) -> None:
        attempts["n"] += 1
        raise TransientFailure("upstream down", "bring it up")

    policy = RetryPolicy(deadline_seconds=0.3, initial_wait=0.05, max_wait=0.05, max_attempts=1000)
    ctx, _ = make(tmp_path)
    started = time.monotonic()
    result = Engine(ctx, [rec.step("never", never, retry=policy, timeout=10)]).run()
    assert (
        not result.ok and result.status.message == "upstream down" and result.status.remedy == "bring it up"
    )
    assert 0.2 < time.monotonic() - started < 2
    assert 2 <= attempts["n"] < 50


def test_permanent_failure_fails_at_once(tmp_path: Path) -> None:
    rec = Recorder()
    attempts = {"n": 0}

    def denied(ctx: Context) -> None:
        attempts["n"] += 1
        raise PermanentFailure("credentials rejected (AADSTS7000215)", "renew the service principal secret")

    ctx, _ = make(tmp_path)
    result = Engine(ctx, [rec.step("arc", denied)], sleep=lambda s: None).run()
    assert not result.ok and attempts["n"] == 1
    assert result.status.state is State.FAILED and result.status.step == "arc"


def test_crash_is_reported_not_stamped(tmp_path: Path) -> None:
    rec = Recorder()

    def crash(ctx: Context) -> None:
        raise ValueError("boom")

    ctx, _ = make(tmp_path)
    result = Engine(ctx, [rec.step("x", crash)]).run()
    assert not result.ok and "crashed: ValueError: boom" in result.status.message
    assert rec.calls == ["x"]
    assert not StateStore(tmp_path).is_stamped("vm-1", "x")


def test_agents_skip_servers_only_steps(tmp_path: Path) -> None:
    rec = Recorder()
    steps = [
        rec.step("metadata", load_config(role="agent"), always_run=True),
        rec.step("k3s"),
        rec.step("arc", servers_only=True),
        rec.step("flux", servers_only=True),
    ]
    ctx, _ = make(tmp_path)
    result = Engine(ctx, steps).run()
    assert result.ok and result.status.state is State.DONE
    assert rec.calls == ["metadata", "k3s"]


def test_only_runs_metadata_then_the_step(tmp_path: Path) -> None:
    rec = Recorder()
    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("a"), rec.step("b")]
    ctx, _ = make(tmp_path)
    result = Engine(ctx, steps).run(only="b")
    assert result.ok and result.status.state is State.PENDING and "not yet done: a" in result.status.message
    assert rec.calls == ["metadata", "b"]
    ctx, _ = make(tmp_path)
    bad = Engine(ctx, steps).run(only="nope")
    assert not bad.ok and "unknown step" in bad.status.message


def test_status_write_failures_tolerated_and_secrets_redacted(tmp_path: Path) -> None:
    rec = Recorder()

    def leak(ctx: Context) -> None:
        raise PermanentFailure("server said very-secret-value-1 is wrong", "do not print very-secret-value-1")

    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("leaky", leak)]
    ctx, _ = make(tmp_path, source=DictSource(fail_writes=True))
    result = Engine(ctx, steps).run()
    assert not result.ok
    text = (tmp_path / "var/lib/arcbake/status.json").read_text()
    assert "very-secret-value-1" not in text and "***" in text
    assert "very-secret-value-1" not in result.status.message + (result.status.remedy or "")


def test_second_run_is_refused_while_one_holds_the_lock(tmp_path: Path) -> None:
    rec = Recorder()
    release = threading.Event()

    def wait(ctx: Context) -> None:
        release.wait(5)

    steps = [rec.step("wait", wait, timeout=10)]
    ctx1, _ = make(tmp_path)
    results = []
    worker = threading.Thread(target=lambda: results.append(Engine(ctx1, steps).run()))
    worker.start()
    deadline = time.monotonic() + 5
    while rec.calls != ["wait"] and time.monotonic() < deadline:
        time.sleep(0.01)
    ctx2, _ = make(tmp_path)
    second = Engine(ctx2, steps).run()
    release.set()
    worker.join(5)
    assert not second.ok and "another firstboot run" in second.status.message
    assert results and results[0].ok


def test_missing_instance_id_fails_metadata(tmp_path: Path) -> None:
    ctx = build_context(tmp_path, DictSource(), env={})
    result = Engine(ctx, []).run()
    assert not result.ok and result.status.step == "metadata" and "product_uuid" in result.status.message


def test_timeout_while_retrying_reports_the_last_failure(tmp_path: Path) -> None:
    rec = Recorder()

    def slow_fail(ctx: Context) -> None:
        time.sleep(0.1)
        raise TransientFailure("no NTP server answered: 10.0.0.1:123", "open UDP 123")

    policy = RetryPolicy(deadline_seconds=100, initial_wait=0.01, max_wait=0.02, max_attempts=100)
    ctx, _ = make(tmp_path)
    result = Engine(ctx, [rec.step("time", slow_fail, retry=policy, timeout=0.35)]).run()
    assert not result.ok
    assert result.status.message == "no NTP server answered: 10.0.0.1:123 (step time gave up after 0.35 s)"
    assert result.status.remedy == "open UDP 123"


def test_progress_reaches_status_json_always_and_guestinfo_throttled(tmp_path: Path) -> None:
    rec = Recorder()

    def chatty(ctx: Context) -> None:
        for i in range(50):
            ctx.progress(f"waiting for node ({i})")

    ctx, src = make(tmp_path)
    result = Engine(ctx, [rec.step("k3s", chatty)]).run()
    assert result.ok
    progress_writes = [v for k, v in src.writes if k == KEY_STATUS and "waiting for node" in v]
    assert 1 <= len(progress_writes) <= 2
    assert "waiting for node (0)" in progress_writes[0]
    # Transitions are never throttled: running k3s, then done.
    assert statuses(src)[-1] == ("done", None) and ("running", "k3s") in statuses(src)


def test_status_records_each_steps_start_end_and_attempts_across_resumes(tmp_path: Path) -> None:
    rec = Recorder()
    tries = {"a": 0}
    broken = {"b": True}

    def a(ctx: Context) -> None:
        tries["a"] += 1
        if tries["a"] < 3:
            raise TransientFailure("not yet", "wait")

    def b(ctx: Context) -> None:
        if broken["b"]:
            raise PermanentFailure("b is broken", "fix b")

    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("a", a), rec.step("b", b)]
    ctx, src = make(tmp_path)
    first = Engine(ctx, steps).run()
    timings = {t.step: t for t in first.status.steps}
    assert [t.step for t in first.status.steps] == ["metadata", "a", "b"]
    assert timings["a"].attempts == 3 and timings["a"].outcome == "done"
    assert timings["b"].outcome == "failed" and timings["b"].attempts == 1
    assert all(t.ended is not None and t.ended >= t.started for t in first.status.steps)
    assert timings["a"].started >= timings["metadata"].started
    # The guestinfo status JSON carries them too.
    last = json.loads([v for k, v in src.writes if k == KEY_STATUS][-1])
    assert [s["step"] for s in last["steps"]] == ["metadata", "a", "b"]
    # A resumed run keeps the earlier runs' history and appends its own.
    broken["b"] = False
    ctx, _ = make(tmp_path)
    second = Engine(ctx, steps).run()
    assert [(t.step, t.outcome) for t in second.status.steps] == [
        ("metadata", "done"),
        ("a", "done"),
        ("b", "failed"),
        ("metadata", "done"),
        ("b", "done"),
    ]
    # A new clone starts with an empty history.
    ctx, _ = make(tmp_path, iid="vm-2")
    third = Engine(ctx, steps).run()
    assert [t.step for t in third.status.steps] == ["metadata", "a", "b"]


def test_step_history_is_bounded(tmp_path: Path) -> None:
    rec = Recorder()
    steps = [rec.step("metadata", load_config(), always_run=True), rec.step("a")]
    for _ in range(40):
        ctx, _ = make(tmp_path)
        result = Engine(ctx, steps).run(only="a")
    assert len(result.status.steps) == MAX_STEP_TIMINGS
    assert result.status.steps[-1].step == "a"
