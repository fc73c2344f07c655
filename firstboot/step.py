"""What a firstboot step is: a small declared header plus `check` and `run` (like cloud-init's cc_* modules).

Each module in `firstboot/steps/` defines:

    META = StepMeta(name="time", needs=("dns",), timeout=120, retry=RetryPolicy(...))
    def check(ctx: Context) -> CheckResult: ...   # read-only; doctor runs it too
    def run(ctx: Context) -> None: ...            # does the work; raises StepFailure

`run` signals failure with TransientFailure (retried with backoff until the policy's deadline) or
PermanentFailure (fails at once: rejected credentials, an unknown resource group, a spec error). Both carry
the message and the remedy an operator reads in the journal, `firstboot status` and guestinfo.

The engine (`firstboot.engine`) bounds the whole step, all attempts included, by `timeout_seconds`; it
retries TransientFailure with exponential backoff and full jitter (`initial_wait` doubling up to
`max_wait`) until `retry.deadline_seconds` or `retry.max_attempts`; any other exception fails the step at
once as an internal error. A step abandoned at its timeout finds `ctx.cancel` set. `always_run` steps run
even when stamped (metadata: it loads the config and secrets every later step needs).

A step may also define `begin(ctx) -> None` with `META.begins_after`: the part of its work that needs only
those steps (K3s's start needs metadata, hostname, dns, time and proxy, not the connectivity and resources
checks). In a full run the engine calls `begin` as soon as those are stamped, then runs the steps in
between while it proceeds (K3s takes seconds to start; the checks run beside it). `begin` must be quick,
idempotent and safe to repeat from `run`, which still does the whole work: a failing `begin` is logged,
and `run` meets the failure again in its turn and reports it with its remedy. What `begin` leaves that must
not outlive the run (arc signs az in beside K3s's start) its `abandon(ctx) -> None` undoes: the engine calls
it when the run ends before the step ran (a failed K3s start, a run stopped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from firstboot.contract import OnboardingConfig, OnboardingSecrets
from firstboot.fsutil import guest_path
from firstboot.subp import redact


class StepFailure(Exception):
    """A step failed; `message` names the broken link, `remedy` says what to do."""

    transient = False

    def __init__(self, message: str, remedy: str) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy


def failure_text(exc: Exception, secrets: list[str]) -> str:
    """What a log line says of an exception a step's helper met: a StepFailure's message, else its type and
    text; secrets redacted either way."""
    why = exc.message if isinstance(exc, StepFailure) else f"{type(exc).__name__}: {exc}"
    return redact(why, secrets)


class TransientFailure(StepFailure):
    """Worth retrying: a timeout, a 5xx, a pod not ready yet."""

    transient = True


class PermanentFailure(StepFailure):
    """Retrying cannot help: fail the step at once."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures, bounded by a deadline."""

    deadline_seconds: float = 300.0
    initial_wait: float = 1.0
    max_wait: float = 30.0
    max_attempts: int = 20


@dataclass(frozen=True)
class StepMeta:
    """A step's declared header."""

    name: str
    needs: tuple[str, ...] = ()
    timeout_seconds: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Steps only the cluster's initialising server runs (arc, flux); agents and joining servers skip them.
    servers_only: bool = False
    summary: str = ""
    # Run even when stamped (cheap and idempotent, and later steps need what it loads: the metadata step).
    always_run: bool = False
    # The steps `begin` (if the module defines one) needs stamped; see the module docstring.
    begins_after: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """One link of the chain as doctor reports it."""

    ok: bool
    message: str
    remedy: str | None = None
    # False when the check could not tell (its prerequisites are not in place yet).
    conclusive: bool = True


class MetadataSource(Protocol):
    """Where guestinfo keys are read from and written back to (rpctool, env, file)."""

    name: str

    def get(self, key: str) -> str | None:
        """The raw value of `key`, or None when unset."""

    def set(self, key: str, value: str) -> None:
        """Write `key` (status, secrets redaction). May raise OSError."""


@dataclass
class Context:
    """What a step sees. Paths always go through `path()` so `--root` confines every file access."""

    root: Path
    source: MetadataSource
    instance_id: str = ""
    config: OnboardingConfig | None = None
    secrets: OnboardingSecrets | None = None
    # Environment for child processes (proxy variables, PATH, KUBECONFIG).
    env: Mapping[str, str] = field(default_factory=dict)
    # Progress lines for the journal and status while a long step waits.
    progress: Callable[[str], None] = lambda _message: None
    # Set by the engine when it abandons a step at its timeout: long waits should check it and return.
    cancel: threading.Event = field(default_factory=threading.Event)
    # Multiplies the waits a step does on its own (poll intervals, settle delays); tests use e.g. 0.01.
    # The engine scales the step timeouts and retry waits itself (ARCBAKE_TIME_SCALE).
    time_scale: float = 1.0
    # Steps whose `begin` succeeded in this run (the engine records it; their `run` skips that part).
    begun: set[str] = field(default_factory=set)

    def path(self, absolute: str | Path) -> Path:
        """Map a guest path (`/etc/hosts`) under the root (`--root DIR`)."""
        return guest_path(self.root, absolute)

    def require_config(self) -> OnboardingConfig:
        """The decoded config; steps after `metadata` can rely on it."""
        if self.config is None:
            raise PermanentFailure("metadata has not been loaded", "run the metadata step first")
        return self.config

    def secret_values(self) -> list[str]:
        """Every secret value, for redaction of logs, errors and status."""
        return self.secrets.values() if self.secrets else []
