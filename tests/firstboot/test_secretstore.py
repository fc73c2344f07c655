"""Secrets bound to the instance id, one generation at a time: what a clone holds after each delivery,
what guestinfo is left with, what survives onboarding, and the generation the status reports."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures.guestinfo import DictSource, onboarding_config, write_metadata

from firstboot import cli, doctor, metadata, secretstore, sources
from firstboot.contract import KEY_SECRETS, OnboardingSecrets, Status
from firstboot.engine import Engine, build_context
from firstboot.state import StateStore
from firstboot.step import CheckResult, Context, StepMeta
from firstboot.steps import Step, load

NEW, OLD = "vm-new", "vm-old"


def held_file(root: Path, iid: str, generation: int, **values: Any) -> None:
    path = secretstore.path(root, iid)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"instance_id": iid, "secrets": {"generation": generation, **values}}
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


@dataclass
class Row:
    """Before: what the guest holds; then guestinfo's key; after: the set in force, files and key."""

    held: list[tuple[str, int, str]] = field(default_factory=list)  # (iid, generation, sp_secret)
    legacy: str | None = None  # /var/lib/arcbake/secrets.json of an older firstboot
    incoming: tuple[int, str] | None = None  # (generation, sp_secret) in guestinfo
    want: tuple[int, str | None] = (1, None)  # the set in force: generation, sp_secret
    kept_iids: tuple[str, ...] = ()  # instance ids whose secrets file remains
    redacted: bool = True  # the guestinfo key reads `---` afterwards


TABLE = [
    pytest.param(Row(incoming=(1, "s-one"), want=(1, "s-one"), kept_iids=(NEW,)), id="first-set"),
    pytest.param(
        Row(held=[(NEW, 1, "s-one")], incoming=(2, "s-two"), want=(2, "s-two"), kept_iids=(NEW,)),
        id="newer-generation-replaces",
    ),
    pytest.param(
        Row(held=[(NEW, 3, "s-three")], incoming=(2, "s-two"), want=(3, "s-three"), kept_iids=(NEW,)),
        id="older-generation-ignored-and-redacted",
    ),
    pytest.param(
        Row(held=[(NEW, 1, "s-one")], incoming=(1, "s-one"), want=(1, "s-one"), kept_iids=(NEW,)),
        id="same-generation-redaction-retried",
    ),
    pytest.param(
        Row(
            held=[(OLD, 4, "s-old")],
            legacy="s-legacy",
            incoming=(1, "s-new"),
            want=(1, "s-new"),
            kept_iids=(NEW,),
        ),
        id="new-instance-rotated-secrets",
        marks=pytest.mark.fault(
            "new instance id with rotated secrets; the old clone's secrets still on disk",
            "the new set is kept 0600 before guestinfo reads ---; the old instance's secrets are removed",
        ),
    ),
    pytest.param(
        Row(held=[(OLD, 1, "s-old")], want=(1, None), kept_iids=(OLD,), redacted=False),
        id="new-instance-no-secrets-never-uses-the-old",
    ),
    pytest.param(
        Row(held=[(NEW, 2, "s-two")], want=(2, "s-two"), kept_iids=(NEW,), redacted=False), id="held"
    ),
]


@pytest.mark.parametrize("row", TABLE)
def test_generations_bound_to_the_instance(tmp_path: Path, row: Row) -> None:
    for iid, gen, value in row.held:
        held_file(tmp_path, iid, gen, sp_secret=value)
    legacy = tmp_path / "var/lib/arcbake/secrets.json"
    if row.legacy is not None:
        legacy.write_text(json.dumps({"sp_secret": row.legacy}))
    data = {}
    if row.incoming is not None:
        data[KEY_SECRETS] = json.dumps({"generation": row.incoming[0], "sp_secret": row.incoming[1]})
    src = DictSource(data)

    got = metadata.load_secrets(src, tmp_path, NEW, persist=True)

    assert got.generation == row.want[0]
    assert (got.sp_secret.get_secret_value() if got.sp_secret else None) == row.want[1]
    kept = tuple(sorted(p.parent.name for p in tmp_path.glob("var/lib/arcbake/instances/*/secrets.json")))
    assert kept == tuple(sorted(row.kept_iids))
    assert not legacy.exists() or row.incoming is None
    if row.want[1] is not None:
        path = secretstore.path(tmp_path, NEW)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        doc = json.loads(path.read_text())
        assert doc["instance_id"] == NEW and doc["secrets"]["generation"] == row.want[0]
    assert (src.data.get(KEY_SECRETS) == "---") is row.redacted or row.incoming is None


def test_new_instance_secret_is_persisted_before_redaction(tmp_path: Path) -> None:
    # The field report: new iid + rotated secrets, guestinfo overwritten with --- while the old file was kept.
    held_file(tmp_path, OLD, 1, sp_secret="s-old")
    seen: list[str | None] = []

    class Watching(DictSource):
        def set(self, key: str, value: str) -> None:
            held = secretstore.read(tmp_path, NEW)
            seen.append(
                held.secrets.sp_secret.get_secret_value() if held and held.secrets.sp_secret else None
            )
            super().set(key, value)

    src = Watching({KEY_SECRETS: json.dumps({"generation": 2, "sp_secret": "s-rotated"})})
    metadata.load_secrets(src, tmp_path, NEW, persist=True)
    assert seen and all(v == "s-rotated" for v in seen)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        pytest.param(
            {"instance_id": OLD, "secrets": {"sp_secret": "x-val"}}, "of instance 'vm-old'", id="other-iid"
        ),
        pytest.param(
            {"instance_id": NEW, "secrets": {"generation": 0}}, "secrets.generation", id="generation-0"
        ),
        pytest.param({"secrets": {"sp_secret": "leak-me-123"}}, "instance_id", id="no-iid"),
    ],
)
def test_unusable_held_file_is_named_without_values(
    tmp_path: Path, doc: dict[str, Any], fragment: str
) -> None:
    path = secretstore.path(tmp_path, NEW)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    with pytest.raises(metadata.MetadataError, match=fragment) as info:
        metadata.load_secrets(DictSource(), tmp_path, NEW, persist=True)
    assert "leak-me-123" not in str(info.value) and "x-val" not in str(info.value)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"generation": 0}, "generation"),
        ({"generation": "two"}, "generation"),
        ({"generation": -1}, "generation"),
    ],
)
def test_generation_must_be_a_positive_int(payload: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        OnboardingSecrets.model_validate(payload)
    assert OnboardingSecrets().generation == 1


def test_doctor_sees_the_newer_set_and_writes_nothing(tmp_path: Path) -> None:
    held_file(tmp_path, NEW, 1, sp_secret="s-one")
    src = DictSource({KEY_SECRETS: json.dumps({"generation": 2, "sp_secret": "s-two"})})
    got = metadata.load_secrets(src, tmp_path, NEW, persist=False)
    assert got.generation == 2 and src.writes == []
    assert secretstore.generation(tmp_path, NEW) == 1


def _noop(name: str) -> Step:
    def run(ctx: Context) -> None:
        assert ctx.secrets is not None and ctx.secrets.sp_secret is not None  # values there while running

    return Step(StepMeta(name=name, timeout_seconds=5), lambda ctx: CheckResult(True, "ok"), run)


@pytest.mark.fault(
    "onboarding done: a disk image of the clone taken afterwards",
    "no secret value left in the instance's secrets file (generation and names kept, 0600)",
)
def test_after_done_only_the_generation_is_kept_and_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    secret = "retire-me-5521"
    meta = write_metadata(
        tmp_path / "meta.json",
        onboarding_config(),
        secrets={"generation": 3, "sp_secret": secret, "k3s_token": "tok-retire-77"},
        instance_id=NEW,
    )
    ctx = build_context(root, sources.FileSource(meta), env={}, time_scale=0.01)
    result = Engine(ctx, [*load(["metadata"]), _noop("later")]).run()
    assert result.ok, result.status
    assert result.status.generation == 3
    path = secretstore.path(root, NEW)
    doc = json.loads(path.read_text())
    assert doc == {
        "instance_id": NEW,
        "secrets": {"generation": 3, "git": {}},
        "retired": ["k3s_token", "sp_secret"],
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    holders = [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert holders == []
    stored = StateStore(root).read_status()
    assert stored is not None and stored.generation == 3
    assert json.loads(json.loads(meta.read_text())["guestinfo.arcbake.status"])["generation"] == 3
    capsys.readouterr()
    assert cli.main(["status", "--root", str(root)]) == 0
    assert "secrets: generation 3" in capsys.readouterr().out
    # After done: a re-run of a step that needs no secret still works (the retirement is a warning
    # naming `builder rotate`), and doctor's metadata check is healthy.
    caplog.set_level("WARNING")
    again = Engine(
        build_context(root, sources.FileSource(meta), env={}, time_scale=0.01), load(["metadata", "hostname"])
    )
    rerun = again.run(only="hostname")
    assert rerun.ok, rerun.status
    assert "builder rotate" in caplog.text and "sp_secret" in caplog.text
    doc_ctx = build_context(root, sources.FileSource(meta), env={}, time_scale=0.01)
    doctor.prepare(doc_ctx)
    checked = load(["metadata"])[0].check(doc_ctx)
    assert checked.ok and "retired" in checked.message


def test_status_generation_is_optional_and_bounded() -> None:
    assert Status.model_validate({"state": "running"}).generation is None
    with pytest.raises(ValueError, match="generation"):
        Status.model_validate({"state": "running", "generation": 0})
