"""proxy: the outbound proxy for k3s, containerd and az, and Arc's `--proxy-skip-range`.

Files written (under `--root`) when `proxy.http_proxy` or `proxy.https_proxy` is set, removed when not:
- `/etc/systemd/system/k3s.service.env` and `k3s-agent.service.env`: HTTP(S)_PROXY / NO_PROXY for K3s and
  `CONTAINERD_*` for its embedded containerd (K3s reads these files from its unit);
- `/etc/profile.d/arcbake-proxy.sh`: the same for az and interactive shells (firstboot itself passes
  `proxyenv.proxy_environment()` to every child through `ctx.env`);
- `/etc/pki/ca-trust/source/anchors/arcbake-proxy-ca.pem` with `proxy.ca_bundle_pem` (then
  `update-ca-trust extract` when the root is `/`).

The values come from `firstboot.proxyenv` (the same derivation builder bakes into the template) and are
written through `firstboot.quoting` (systemd environment file, POSIX shell).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from firstboot import proxyenv, subp
from firstboot.contract import OnboardingConfig
from firstboot.fsutil import atomic_write
from firstboot.step import CheckResult, Context, PermanentFailure, RetryPolicy, StepMeta

LOG = logging.getLogger(__name__)

META = StepMeta(
    name="proxy",
    needs=("dns",),
    timeout_seconds=60,
    retry=RetryPolicy(deadline_seconds=30, initial_wait=1, max_wait=5),
    summary="writing the proxy environment for k3s, containerd and az",
)

K3S_ENV_FILES = ("/etc/systemd/system/k3s.service.env", "/etc/systemd/system/k3s-agent.service.env")
PROFILE_FILE = "/etc/profile.d/arcbake-proxy.sh"
CA_FILE = proxyenv.CA_FILE
MARKER = "# written by arcbake firstboot (proxy step)"


def _k3s_env(config: OnboardingConfig) -> str:
    return "\n".join([MARKER, *proxyenv.k3s_env_lines(config.proxy, config.k3s)]) + "\n"


def _profile(config: OnboardingConfig) -> str:
    return "\n".join([MARKER, *proxyenv.profile_lines(config.proxy, config.k3s)]) + "\n"


def _expected(config: OnboardingConfig) -> dict[str, str | None]:
    active = bool(config.proxy.http_proxy or config.proxy.https_proxy)
    files: dict[str, str | None] = {p: _k3s_env(config) if active else None for p in K3S_ENV_FILES}
    files[PROFILE_FILE] = _profile(config) if active else None
    files[CA_FILE] = config.proxy.ca_bundle_pem.strip() + "\n" if config.proxy.ca_bundle_pem else None
    return files


def run(ctx: Context) -> None:
    """Write (or remove) the proxy files; install the CA bundle."""
    config = ctx.require_config()
    for guest_path, content in _expected(config).items():
        target = ctx.path(guest_path)
        if content is None:
            if target.exists() and _ours(guest_path, target):
                target.unlink()
            continue
        try:
            atomic_write(target, content, mode=0o644)
        except OSError as exc:
            raise PermanentFailure(
                f"cannot write {guest_path}: {exc}", f"check that {target.parent} is writable"
            ) from None
    if config.proxy.ca_bundle_pem and ctx.root == Path("/") and shutil.which("update-ca-trust"):
        try:
            subp.run(["update-ca-trust", "extract"], timeout=60, description="updating the CA trust store")
        except subp.ProcessExecutionError as exc:
            raise PermanentFailure(
                str(exc), "run `update-ca-trust extract` by hand and read its error"
            ) from None


def _ours(guest_path: str, target: Path) -> bool:
    # The CA file is named for arcbake alone; the others carry the marker line.
    return guest_path == CA_FILE or MARKER in _read(target)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def check(ctx: Context) -> CheckResult:
    """Are the proxy files what the config asks for?"""
    config = ctx.require_config()
    wrong = []
    for guest_path, content in _expected(config).items():
        actual = _read(ctx.path(guest_path)) if ctx.path(guest_path).exists() else None
        if content is not None and actual != content:
            wrong.append(guest_path)
        if content is None and actual is not None and _ours(guest_path, ctx.path(guest_path)):
            wrong.append(guest_path)
    if wrong:
        return CheckResult(
            False, f"proxy files out of date: {', '.join(wrong)}", "run `firstboot run --only proxy`"
        )
    proxy = config.proxy.https_proxy or config.proxy.http_proxy
    return CheckResult(True, f"proxy {proxy} configured" if proxy else "no proxy configured")
