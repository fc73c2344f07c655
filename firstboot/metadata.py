"""Reading the onboarding metadata from a source: config, secrets (once) and the instance id.

- `load_config(source)`: `guestinfo.arcbake.config` (+ `.encoding`) decoded like cloud-init, parsed as YAML
  or JSON, validated as `OnboardingConfig`; every problem is reported at once by key path (and YAML line).
- `load_secrets(source, root, iid)`: read once per generation from `guestinfo.arcbake.secrets`, kept 0600
  bound to the instance id (`firstboot.secretstore`) BEFORE the key is overwritten with `---`; a newer
  generation replaces the held set, later runs read the held set.
- `instance_id(source, root)`: `instance-id` of `guestinfo.metadata`, else /sys/class/dmi/id/product_uuid.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from firstboot import encoding, located_yaml, secretstore
from firstboot.contract import (
    ENCODING_SUFFIX,
    KEY_CONFIG,
    KEY_METADATA,
    KEY_SECRETS,
    PATTERN_HINTS,
    REDACTED_VALUE,
    ArcAuth,
    OnboardingConfig,
    OnboardingSecrets,
    Role,
)
from firstboot.fsutil import STATE_DIR, atomic_write, guest_path, read_state
from firstboot.sources import SourceError
from firstboot.step import MetadataSource

LOG = logging.getLogger(__name__)

CONFIG_CACHE = f"{STATE_DIR}/config.json"
PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"
M = TypeVar("M", bound=BaseModel)
_HINTS = located_yaml.Hints(patterns=PATTERN_HINTS)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


class MetadataError(Exception):
    """Metadata is missing or invalid; `problems` lists each one by key path."""

    def __init__(self, key: str, problems: list[str]) -> None:
        self.key = key
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{key} is invalid ({count}): " + "; ".join(problems))


def read_value(source: MetadataSource, key: str) -> str | None:
    """The decoded text of `key` (using `key.encoding`), None when unset; MetadataError when undecodable."""
    raw = source.get(key)
    if raw is None:
        return None
    enc = source.get(key + ENCODING_SUFFIX)
    try:
        data = encoding.decode(raw, enc)
    except encoding.DecodeError as exc:
        raise MetadataError(key, [f"{key}: {exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(key, [f"{key}: not UTF-8 text (byte {exc.start})"]) from None


def _located(key: str, text: str) -> located_yaml.LocatedYaml:
    """YAML or JSON text to a mapping, with the line of every key (the project's one located parser)."""
    try:
        doc = located_yaml.load_located(text, key)
    except located_yaml.InputError as exc:
        problems = []
        for issue in exc.issues:
            where = f" (line {issue.line})" if issue.line else ""
            path = f"{key}.{issue.path}" if issue.path else key
            problems.append(f"{path}: not valid YAML or JSON{where}: {issue.message}")
        raise MetadataError(key, problems) from None
    if not isinstance(doc.data, dict):
        raise MetadataError(key, [f"{key}: must be a mapping, got {type(doc.data).__name__}"])
    return doc


def parse_mapping(key: str, text: str) -> dict[str, Any]:
    """YAML or JSON text to a mapping; MetadataError naming the key and line otherwise."""
    data: dict[str, Any] = _located(key, text).data
    return data


def _problem(issue: located_yaml.Issue) -> str:
    where = f" (line {issue.line})" if issue.line else ""
    return f"{issue.path or '(top level)'}{where}: {issue.message}"


def _validate(model: type[M], key: str, text: str) -> M:
    doc = _located(key, text)
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        issues = located_yaml.issues_from_validation(exc, model, doc.data, doc, hints=_HINTS)
        raise MetadataError(key, list(dict.fromkeys(_problem(i) for i in issues))) from None


def load_config(source: MetadataSource) -> OnboardingConfig:
    """Decode and validate `guestinfo.arcbake.config`; MetadataError lists every problem."""
    text = read_value(source, KEY_CONFIG)
    if text is None:
        raise MetadataError(KEY_CONFIG, [f"{KEY_CONFIG}: not set (builder deploy writes it)"])
    return _validate(OnboardingConfig, KEY_CONFIG, text)


def load_secrets(
    source: MetadataSource, root: Path, instance_id: str, *, persist: bool = True
) -> OnboardingSecrets:
    """The secrets in force for `instance_id`: the held set, or a newer generation from guestinfo.

    With `persist` (the metadata step), a set read from guestinfo goes through `secretstore.accept`
    (written 0600, bound to the instance id, when newer than the held one) and only then is the guestinfo
    key overwritten with `---`; a key holding the same or an older generation (a redaction that failed, a
    replay) is overwritten too and changes nothing. Without `persist` (doctor), nothing is written
    anywhere: the newer of the two sets is returned.
    """
    try:
        held = secretstore.read(root, instance_id)
    except secretstore.SecretStoreError as exc:
        raise MetadataError(KEY_SECRETS, [str(exc)]) from None
    text = read_value(source, KEY_SECRETS)
    incoming = _validate(OnboardingSecrets, KEY_SECRETS, text) if text is not None else None
    if incoming is None:
        return held.secrets if held else OnboardingSecrets()
    if not persist:
        return incoming if held is None or incoming.generation > held.secrets.generation else held.secrets
    try:
        outcome = secretstore.accept(root, instance_id, incoming)
    except (OSError, secretstore.SecretStoreError) as exc:
        # Not persisted: the key keeps its value for the next run.
        raise MetadataError(KEY_SECRETS, [f"{KEY_SECRETS}: cannot keep the secrets: {exc}"]) from None
    LOG.info("%s: %s", KEY_SECRETS, outcome.reason)
    _redact(source)
    return outcome.secrets


def _redact(source: MetadataSource) -> None:
    try:
        source.set(KEY_SECRETS, REDACTED_VALUE)
        source.set(KEY_SECRETS + ENCODING_SUFFIX, "")
        LOG.info("%s read and overwritten with %s", KEY_SECRETS, REDACTED_VALUE)
    except (OSError, SourceError) as exc:
        # The secrets are safe on disk; the next run retries the redaction.
        LOG.warning("could not overwrite %s in guestinfo (retried next run): %s", KEY_SECRETS, exc)


def check_secrets(config: OnboardingConfig, secrets: OnboardingSecrets) -> list[str]:
    """Secrets the config needs but does not have, and secrets for nothing; one line per problem."""
    problems = []
    if config.k3s.role is Role.AGENT and secrets.k3s_token is None:
        problems.append(f"{KEY_SECRETS}.k3s_token: required for an agent (the server's join token)")
    if config.k3s.role is Role.SERVER and config.arc is not None:
        if config.arc.auth is ArcAuth.SECRET and secrets.sp_secret is None:
            problems.append(f"{KEY_SECRETS}.sp_secret: required by arc.auth=secret")
        if config.arc.auth is ArcAuth.CERTIFICATE and secrets.sp_certificate_pem is None:
            problems.append(f"{KEY_SECRETS}.sp_certificate_pem: required by arc.auth=certificate")
    names = {c.name for c in config.flux.configurations}
    for name in sorted(set(secrets.git) - names):
        problems.append(f"{KEY_SECRETS}.git.{name}: no flux configuration named {name!r}")
    return problems


def instance_id(source: MetadataSource, root: Path) -> str:
    """The clone's identity: `instance-id` in guestinfo.metadata, else the DMI product UUID."""
    text = read_value(source, KEY_METADATA)
    if text is not None:
        data = parse_mapping(KEY_METADATA, text)
        value = data.get("instance-id")
        if value is not None:
            if not isinstance(value, str | int) or not str(value).strip():
                raise MetadataError(KEY_METADATA, [f"{KEY_METADATA}.instance-id: must be a non-empty string"])
            return _safe(str(value).strip())
    uuid_path = guest_path(root, PRODUCT_UUID)
    try:
        value = uuid_path.read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        value = ""
    if not value:
        raise MetadataError(
            KEY_METADATA,
            [f"{KEY_METADATA}.instance-id: not set, and {PRODUCT_UUID} is not readable"],
        )
    return _safe(value)


def _safe(value: str) -> str:
    # The id names a directory: keep it one path component.
    safe = _SAFE_ID.sub("_", value)
    return "_" + safe if safe in (".", "..") else safe


def cache_config(root: Path, config: OnboardingConfig) -> None:
    """Keep the decoded config (no secrets) for doctor and status when guestinfo is unreadable."""
    atomic_write(guest_path(root, CONFIG_CACHE), config.model_dump_json(indent=2), mode=0o600)


def cached_config(root: Path) -> OnboardingConfig | None:
    """The config the last metadata step saw, or None."""
    path = guest_path(root, CONFIG_CACHE)
    try:
        return OnboardingConfig.model_validate_json(read_state(path))
    except (OSError, ValidationError):
        return None
