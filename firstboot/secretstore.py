"""The secrets a clone holds: bound to its instance id, one generation at a time.

    /var/lib/arcbake/instances/<instance-id>/secrets.json   0600, directories 0700

holds `{"instance_id": ..., "secrets": {<OnboardingSecrets, values revealed, with its generation>},
"retired": [...]}`. The file is bound to the instance id twice: by its directory and by the id recorded in
it, so a copied or renamed directory is not taken for this clone's.

- `accept(root, iid, incoming)` is the one rule for a set read from guestinfo (the metadata step now,
  `firstboot rotate` later): a set is taken when this instance holds none or holds an older generation;
  the same or an older generation is ignored (a redaction that failed, a replayed key). Taking a set
  writes it 0600 first (callers overwrite the guestinfo key only after `accept` returns), and removes
  every secrets file of another instance id and the pre-instance `/var/lib/arcbake/secrets.json`: a new
  clone never keeps, or uses, the secrets of the VM it was copied from.
- `retire(root, iid)` after onboarding is done keeps only what later operations need: the generation
  (so a rotation knows what "newer" means) and the names of the retired secrets, no value. What the
  running system needs lives elsewhere, each 0600: the K3s join token in `/var/lib/arcbake/k3s-token`
  (K3s reads `token-file:` at every start), Flux's Git credentials in the cluster's local auth Secret.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firstboot.contract import OnboardingSecrets
from firstboot.fsutil import STATE_DIR, atomic_write, guest_path, private_dir, read_state

LOG = logging.getLogger(__name__)

INSTANCES_DIR = f"{STATE_DIR}/instances"
FILE_NAME = "secrets.json"
# Where secrets lived before they were bound to an instance id; removed, never read.
LEGACY_FILE = f"{STATE_DIR}/secrets.json"


class SecretStoreError(Exception):
    """The held secrets file is unusable (invalid, another instance's, a symlink); the message names it."""


class _Held(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_id: str
    secrets: OnboardingSecrets
    # Names of the secrets dropped by `retire` (values gone; `builder rotate` delivers new ones).
    retired: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Held:
    """The set in force for an instance, and what `retire` dropped from it."""

    secrets: OnboardingSecrets
    retired: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accepted:
    """What `accept` decided: the set in force, and whether it is the incoming one."""

    secrets: OnboardingSecrets
    taken: bool
    reason: str


def path(root: Path, instance_id: str) -> Path:
    """`instances/<instance-id>/secrets.json` under `root`."""
    return guest_path(root, f"{INSTANCES_DIR}/{instance_id}/{FILE_NAME}")


def read(root: Path, instance_id: str) -> Held | None:
    """The set this instance holds, None when it holds none; SecretStoreError when the file is unusable."""
    file = path(root, instance_id)
    try:
        raw = read_state(file)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretStoreError(f"{file}: {exc.strerror or exc}") from None
    try:
        held = _Held.model_validate_json(raw)
    except ValidationError as exc:
        # Paths and messages only: pydantic's input values would be the secrets themselves.
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise SecretStoreError(f"{file}: invalid ({where})") from None
    if held.instance_id != instance_id:
        raise SecretStoreError(
            f"{file}: holds the secrets of instance {held.instance_id!r}, not {instance_id!r}"
        )
    return Held(held.secrets, tuple(held.retired))


def generation(root: Path, instance_id: str) -> int | None:
    """The generation this instance holds, None when none (or the file is unusable)."""
    try:
        held = read(root, instance_id)
    except SecretStoreError:
        return None
    return held.secrets.generation if held else None


def accept(root: Path, instance_id: str, incoming: OnboardingSecrets) -> Accepted:
    """Apply "a newer generation replaces the older" to `incoming`; see the module doc."""
    held = read(root, instance_id)
    if held is not None and incoming.generation <= held.secrets.generation:
        older = "the same" if incoming.generation == held.secrets.generation else "an older"
        return Accepted(
            held.secrets,
            False,
            f"generation {incoming.generation} is {older} generation than the one held "
            f"({held.secrets.generation}); kept the held set",
        )
    _write(root, instance_id, _Held(instance_id=instance_id, secrets=incoming))
    removed = _remove_foreign(root, instance_id)
    was = f"replaced generation {held.secrets.generation}" if held else "first set for this instance"
    gone = f"; removed the secrets of {', '.join(removed)}" if removed else ""
    return Accepted(incoming, True, f"took generation {incoming.generation} ({was}){gone}")


def retire(root: Path, instance_id: str) -> list[str]:
    """Drop every secret value, keeping the generation (after onboarding is done); the names dropped."""
    held = read(root, instance_id)
    if held is None:
        return []
    names = _names(held.secrets)
    if not names:
        return []
    kept = OnboardingSecrets(generation=held.secrets.generation)
    retired = sorted({*held.retired, *names})
    _write(root, instance_id, _Held(instance_id=instance_id, secrets=kept, retired=retired))
    return names


def _names(secrets: OnboardingSecrets) -> list[str]:
    out = [n for n in ("sp_secret", "sp_certificate_pem", "k3s_token") if getattr(secrets, n) is not None]
    return out + [f"git.{name}" for name in sorted(secrets.git)]


def _write(root: Path, instance_id: str, held: _Held) -> None:
    file = path(root, instance_id)
    private_dir(guest_path(root, STATE_DIR))
    private_dir(guest_path(root, INSTANCES_DIR))
    private_dir(file.parent)
    doc = {"instance_id": held.instance_id, "secrets": held.secrets.revealed(), "retired": held.retired}
    atomic_write(file, json.dumps(doc, indent=2, sort_keys=True) + "\n", mode=0o600)


def _remove_foreign(root: Path, instance_id: str) -> list[str]:
    """Unlink the secrets of every other instance and the legacy file; the instance ids removed."""
    removed: list[str] = []
    legacy = guest_path(root, LEGACY_FILE)
    if legacy.is_symlink() or legacy.exists():
        legacy.unlink()  # unlink removes a symlink itself, never its target
        removed.append("a previous firstboot (secrets.json)")
    instances = guest_path(root, INSTANCES_DIR)
    for other in sorted(instances.iterdir()) if instances.is_dir() else []:
        file = other / FILE_NAME
        if other.name == instance_id or other.is_symlink():
            continue
        if file.is_symlink() or file.exists():
            file.unlink()
            removed.append(f"instance {other.name}")
    if removed:
        LOG.info("removed secrets not bound to instance %s: %s", instance_id, ", ".join(removed))
    return removed
