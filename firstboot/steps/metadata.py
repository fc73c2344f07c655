"""metadata: decode and validate the onboarding config, read the secrets once, derive the environment.

Runs on every `firstboot run` (`always_run`): it is cheap and idempotent, and every later step needs the
config and secrets it loads into the Context. Invalid metadata fails here, with every problem listed by
key path, so nothing after it runs.
"""

from __future__ import annotations

import logging

from firstboot import metadata, proxyenv, secretstore
from firstboot.contract import KEY_CONFIG
from firstboot.sources import SourceError
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta, TransientFailure

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="metadata",
    timeout_seconds=60,
    retry=RetryPolicy(deadline_seconds=45, initial_wait=1, max_wait=10),
    always_run=True,
    summary="reading the onboarding metadata from guestinfo",
)

REMEDY_INVALID = (
    "fix the fleet file and run `builder deploy` again (it rewrites guestinfo.arcbake.config), "
    "or correct the VM's guestinfo keys; `builder validate` reports the same problems"
)
REMEDY_SOURCE = (
    "check that open-vm-tools is installed and running (vmware-rpctool 'info-get guestinfo.arcbake.config'), "
    "or run with --source env / --source file:PATH"
)
REMEDY_DEPLOY = "add the missing secrets to the fleet's secrets and run `builder deploy` again"
REMEDY_ROTATE = "`builder rotate FLEET` delivers a newer generation when a step needs them again"


def run(ctx: Context) -> None:
    """Load config and secrets into `ctx` (secrets persisted 0600 and redacted in guestinfo)."""
    try:
        config = metadata.load_config(ctx.source)
        secrets = metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=True)
    except metadata.MetadataError as exc:
        raise PermanentFailure(str(exc), REMEDY_INVALID) from None
    except SourceError as exc:
        raise TransientFailure(f"cannot read {KEY_CONFIG}: {exc}", REMEDY_SOURCE) from None
    problems = metadata.check_secrets(config, secrets)
    if problems:
        if _retired(ctx) is None:
            message = f"guestinfo.arcbake.secrets is incomplete: {'; '.join(problems)}"
            raise PermanentFailure(message, REMEDY_DEPLOY)
        # Onboarded before: a re-run (`--only dns`, say) needs no secret; a step that does fails there.
        LOG.warning("secrets retired after onboarding (%s); %s", "; ".join(problems), REMEDY_ROTATE)
    ctx.config = config
    ctx.secrets = secrets
    # The proxy environment applies to every child process from here on.
    ctx.env = {**ctx.env, **proxyenv.proxy_environment(config.proxy, config.k3s)}
    metadata.cache_config(ctx.root, config)


def check(ctx: Context) -> CheckResult:
    """Read-only: config present and valid, the secrets it needs present (nothing is written)."""
    try:
        config = metadata.load_config(ctx.source)
    except metadata.MetadataError as exc:
        return CheckResult(False, str(exc), REMEDY_INVALID)
    except SourceError as exc:
        return CheckResult(False, f"cannot read {KEY_CONFIG}: {exc}", REMEDY_SOURCE)
    try:
        secrets = metadata.load_secrets(ctx.source, ctx.root, ctx.instance_id, persist=False)
    except (metadata.MetadataError, SourceError) as exc:
        return CheckResult(False, f"secrets unreadable: {exc}", REMEDY_INVALID)
    problems = metadata.check_secrets(config, secrets)
    role = config.k3s.role.value
    if problems:
        held = _retired(ctx)
        if held is None:
            message = f"guestinfo.arcbake.secrets is incomplete: {'; '.join(problems)}"
            return CheckResult(False, message, REMEDY_DEPLOY)
        retired = f"secrets generation {held.secrets.generation} retired"
        return CheckResult(True, f"config valid: host {config.hostname}, role {role}; {retired}")
    return CheckResult(True, f"config valid: host {config.hostname}, role {role}")


def _retired(ctx: Context) -> secretstore.Held | None:
    """The held set when its values were retired once onboarding was done, else None."""
    try:
        held = secretstore.read(ctx.root, ctx.instance_id)
    except secretstore.SecretStoreError:
        return None
    return held if held is not None and held.retired else None
