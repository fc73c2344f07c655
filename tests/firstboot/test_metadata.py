"""Metadata: decoding table (cross-checked with cloud-init), sources, config, secrets, instance id."""

from __future__ import annotations

import base64
import gzip
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from fixtures.guestinfo import DictSource, fake_rpctool, onboarding_config, write_metadata

from firstboot import encoding, metadata, secretstore, sources
from firstboot.contract import KEY_CONFIG, KEY_METADATA, KEY_SECRETS

CONFIG_TEXT = json.dumps(onboarding_config())
IID = "vm-1"
CONFIG_YAML = """\
hostname: node1
time:
  ntp_servers: [127.0.0.1]
arc:
  cluster_name: c1
  resource_group: rg
  location: westeurope
  subscription_id: 00000000-0000-0000-0000-000000000001
  tenant_id: 00000000-0000-0000-0000-000000000002
  client_id: 00000000-0000-0000-0000-000000000003
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BOMB = b64(gzip.compress(b"\0" * (encoding.MAX_DECODED + 10)))
TRUNCATED = b64(gzip.compress(CONFIG_TEXT.encode())[:-12])

# (value, encoding, expected text or error fragment)
DECODE_TABLE = [
    pytest.param(encoding.encode(CONFIG_TEXT, "gzip+base64"), "gzip+base64", CONFIG_TEXT, id="gzip+base64"),
    pytest.param(encoding.encode(CONFIG_TEXT, "gzip+base64"), "gz+b64", CONFIG_TEXT, id="gz+b64"),
    pytest.param(encoding.encode(CONFIG_TEXT, "base64"), "base64", CONFIG_TEXT, id="base64"),
    pytest.param(encoding.encode(CONFIG_TEXT, "base64"), "b64", CONFIG_TEXT, id="b64"),
    pytest.param(CONFIG_TEXT, None, CONFIG_TEXT, id="plain"),
    pytest.param(CONFIG_YAML, "", CONFIG_YAML, id="plain-yaml-empty-encoding"),
    pytest.param("bm90IGJhc2U2NA=!", "base64", "DecodeError:invalid base64", id="bad-base64"),
    pytest.param(TRUNCATED, "gzip+base64", "DecodeError:invalid gzip", id="truncated-gzip"),
    pytest.param(b64(b"not gzip at all"), "gzip+base64", "DecodeError:invalid gzip", id="base64-not-gzip"),
    pytest.param("x" * (encoding.MAX_ENCODED + 1), None, "DecodeError:over the", id="oversize-encoded"),
    pytest.param(
        b64(b"a" * (encoding.MAX_DECODED + 1)), "base64", "DecodeError:over the", id="oversize-decoded"
    ),
    pytest.param(BOMB, "gzip+base64", "DecodeError:refused, not expanded", id="gzip-bomb"),
    pytest.param(b64(b"\xff\xfe config"), "base64", "MetadataError:not UTF-8", id="non-utf8"),
    pytest.param(CONFIG_TEXT, "rot13", "DecodeError:unknown encoding", id="unknown-encoding"),
]


@pytest.mark.parametrize(("value", "enc", "expected"), DECODE_TABLE)
def test_decode_table(value: str, enc: str | None, expected: str) -> None:
    src = DictSource({KEY_CONFIG: value} | ({KEY_CONFIG + ".encoding": enc} if enc is not None else {}))
    if ":" in expected and expected.split(":")[0] in ("DecodeError", "MetadataError"):
        with pytest.raises(metadata.MetadataError) as info:
            metadata.read_value(src, KEY_CONFIG)
        assert expected.split(":", 1)[1] in str(info.value)
        assert KEY_CONFIG in str(info.value)
    else:
        assert metadata.read_value(src, KEY_CONFIG) == expected.rstrip()


def test_gzip_bomb_is_not_expanded_beyond_the_cap() -> None:
    # The bomb is tiny encoded; decoding must stop at the cap rather than allocate the whole payload.
    assert len(BOMB) < 10_000
    with pytest.raises(encoding.DecodeError, match="refused"):
        encoding.decode(BOMB, "gzip+base64", max_decoded=1024)


LENIENT = {"rot13"}

CLOUDINIT_SCRIPT = r"""
import json, sys
from cloudinit.sources import DataSourceVMware as ds
out = []
for key, enc, value in json.load(sys.stdin):
    try:
        res = ds.decode(key, enc, value)
        out.append(["ok", res if isinstance(res, str) else None])
    except Exception as exc:
        out.append(["error", type(exc).__name__])
json.dump(out, sys.stdout)
"""


def test_cross_check_against_cloud_init_decoder() -> None:
    """Every valid case decodes to what cloud-init's DataSourceVMware.decode returns.

    Where cloud-init is lenient (it passes undecodable gzip through as raw bytes, ignores non-base64
    characters, and reads an unknown encoding as plain text), firstboot refuses with a named error: those
    rows must show that cloud-init did not produce the config either, except the documented leniency
    `LENIENT` (an unknown encoding name, which firstboot rejects so a typo is caught at once).
    """
    cases = [(p.values[0], p.values[1], p.values[2]) for p in DECODE_TABLE if p.id != "oversize-encoded"]
    payload = [["arcbake.config", enc or "", value] for value, enc, _ in cases]
    env = dict(os.environ, PYTHONPATH="/usr/lib/python3/dist-packages")
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", CLOUDINIT_SCRIPT],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    theirs = json.loads(proc.stdout)
    assert len(theirs) == len(cases)
    compared = 0
    for (value, enc, expected), (kind, text) in zip(cases, theirs, strict=True):
        src = DictSource({KEY_CONFIG: str(value), KEY_CONFIG + ".encoding": str(enc or "")})
        try:
            ours: str | None = metadata.read_value(src, KEY_CONFIG)
        except metadata.MetadataError:
            ours = None
        if ours is not None:
            assert kind == "ok" and text is not None and text.rstrip() == ours, (enc, expected)
            compared += 1
        else:
            # We refuse; cloud-init must not have produced the config either (except the known leniency).
            lenient = enc in LENIENT
            assert lenient == (kind == "ok" and text == value), (enc, expected)
    assert compared >= 6


def test_env_names_follow_cloud_init() -> None:
    env = dict(os.environ, PYTHONPATH="/usr/lib/python3/dist-packages")
    script = (
        "from cloudinit.sources import DataSourceVMware as d;"
        "print(d.get_guestinfo_envvar_key_name('arcbake.config.encoding'))"
    )
    theirs = subprocess.run(
        ["/usr/bin/python3", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=True
    ).stdout.strip()
    assert (
        sources.env_name("guestinfo.arcbake.config.encoding")
        == theirs
        == "VMX_GUESTINFO_ARCBAKE_CONFIG_ENCODING"
    )


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param("[1, 2]", ["must be a mapping"], id="not-a-mapping"),
        pytest.param("hostname: [unclosed", ["not valid YAML or JSON", "line 1"], id="yaml-syntax"),
        pytest.param('{"hostname": "node1",', ["not valid YAML or JSON"], id="json-syntax"),
        pytest.param(
            CONFIG_YAML.replace("hostname: node1", "hostname: Node_1") + "hosts: 3\n",
            [
                "hostname (line 1)",
                "hosts (line 11): unknown key (allowed: schema_version, hostname, domain",
                "2 problems",
            ],
            id="wrong-type-and-unknown-key",
        ),
        pytest.param(
            CONFIG_YAML.replace("[127.0.0.1]", "'not-a-list'").replace("westeurope", "West Europe"),
            ["time.ntp_servers (line 3)", "arc.location (line 7)"],
            id="several-errors-at-once",
        ),
        pytest.param(
            json.dumps(onboarding_config() | {"dns": {"port": "fifty-three"}}),
            ["dns.port", "valid integer"],
            id="json-wrong-type",
        ),
    ],
)
def test_config_errors_listed_by_key_path(text: str, fragments: list[str]) -> None:
    src = DictSource({KEY_CONFIG: encoding.encode(text), KEY_CONFIG + ".encoding": "gzip+base64"})
    with pytest.raises(metadata.MetadataError) as info:
        metadata.load_config(src)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_config_missing_is_named() -> None:
    with pytest.raises(metadata.MetadataError, match=r"guestinfo.arcbake.config: not set"):
        metadata.load_config(DictSource())


def test_yaml_and_json_configs_load() -> None:
    for text in (CONFIG_YAML, CONFIG_TEXT):
        config = metadata.load_config(DictSource({KEY_CONFIG: text}))
        assert config.hostname == "node1"


def test_secrets_read_once_written_0600_then_redacted(tmp_path: Path) -> None:
    secret = "planted-sp-secret-7781"
    src = DictSource(
        {
            KEY_SECRETS: encoding.encode(json.dumps({"sp_secret": secret})),
            KEY_SECRETS + ".encoding": "gzip+base64",
        }
    )
    got = metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert got.sp_secret is not None and got.sp_secret.get_secret_value() == secret
    path = secretstore.path(tmp_path, IID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text())["secrets"]["sp_secret"] == secret
    assert src.data[KEY_SECRETS] == "---"
    assert src.writes[0] == (KEY_SECRETS, "---")
    # Later runs read the file; guestinfo is not asked to write again.
    again = metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert again.sp_secret is not None and again.sp_secret.get_secret_value() == secret
    assert len(src.writes) == 2


def test_secrets_file_written_before_redaction(tmp_path: Path) -> None:
    seen: list[bool] = []

    class Watching(DictSource):
        def set(self, key: str, value: str) -> None:
            seen.append(secretstore.path(tmp_path, IID).exists())
            super().set(key, value)

    src = Watching({KEY_SECRETS: json.dumps({"k3s_token": "tok-123456"})})
    metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert seen and all(seen)


def test_failed_redaction_is_retried_next_run(tmp_path: Path) -> None:
    src = DictSource({KEY_SECRETS: json.dumps({"k3s_token": "tok-123456"})}, fail_writes=True)
    metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert src.data[KEY_SECRETS] != "---"
    src.fail_writes = False
    metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert src.data[KEY_SECRETS] == "---"


def test_doctor_mode_writes_nothing(tmp_path: Path) -> None:
    src = DictSource({KEY_SECRETS: json.dumps({"k3s_token": "tok-123456"})})
    metadata.load_secrets(src, tmp_path, IID, persist=False)
    assert not secretstore.path(tmp_path, IID).exists()
    assert src.writes == []


def test_invalid_secrets_do_not_leak_values(tmp_path: Path) -> None:
    secret = "leaky-value-99182"
    src = DictSource({KEY_SECRETS: json.dumps({"sp_secret": secret, "bogus": secret})})
    with pytest.raises(metadata.MetadataError) as info:
        metadata.load_secrets(src, tmp_path, IID, persist=True)
    assert "bogus" in str(info.value)
    assert secret not in str(info.value)
    assert not secretstore.path(tmp_path, IID).exists()


def test_instance_id_from_metadata_then_dmi(tmp_path: Path) -> None:
    src = DictSource({KEY_METADATA: "instance-id: vm-42\nlocal-hostname: n1\n"})
    assert metadata.instance_id(src, tmp_path) == "vm-42"
    uuid = tmp_path / "sys/class/dmi/id/product_uuid"
    uuid.parent.mkdir(parents=True)
    uuid.write_text("4223A1B2-0000-1111-2222-333344445555\n")
    assert metadata.instance_id(DictSource(), tmp_path) == "4223a1b2-0000-1111-2222-333344445555"
    assert metadata.instance_id(DictSource({KEY_METADATA: "{}"}), tmp_path).startswith("4223a1b2")
    assert metadata.instance_id(DictSource({KEY_METADATA: "instance-id: ../../x"}), tmp_path) == ".._.._x"


def test_instance_id_missing_everywhere(tmp_path: Path) -> None:
    with pytest.raises(metadata.MetadataError, match="product_uuid"):
        metadata.instance_id(DictSource(), tmp_path)


def test_file_source_roundtrip_and_atomic_rewrite(tmp_path: Path) -> None:
    path = write_metadata(tmp_path / "meta.json", onboarding_config())
    src = sources.FileSource(path)
    assert metadata.load_config(src).hostname == "node1"
    src.set("guestinfo.arcbake.status", '{"state": "running"}')
    assert json.loads(path.read_text())["guestinfo.arcbake.status"] == '{"state": "running"}'
    assert sources.FileSource(path).get("guestinfo.arcbake.status") == '{"state": "running"}'
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("- a\n- b\n", "must be a mapping"), ("a: [\n", "line"), ("a: {b: c}\n", "must be a string")],
)
def test_file_source_errors(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(content)
    with pytest.raises(sources.SourceError, match=fragment):
        sources.FileSource(path)
    with pytest.raises(sources.SourceError, match="not found"):
        sources.FileSource(tmp_path / "missing.yaml")


def test_env_source_reads_cloud_init_names_and_keeps_writes_in_memory() -> None:
    environ = {"VMX_GUESTINFO_ARCBAKE_CONFIG": CONFIG_YAML, "VMX_GUESTINFO_ARCBAKE_SECRETS": "---  "}
    src = sources.EnvSource(environ)
    assert metadata.load_config(src).hostname == "node1"
    assert src.get(KEY_SECRETS) is None
    src.set("guestinfo.arcbake.status", "x")
    assert src.get("guestinfo.arcbake.status") == "x"
    assert "VMX_GUESTINFO_ARCBAKE_STATUS" not in environ


@pytest.mark.allow_subp("vmware-rpctool")
def test_guestinfo_source_through_rpctool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "guestinfo.json"
    store.write_text(json.dumps({KEY_CONFIG: CONFIG_YAML}))
    monkeypatch.setenv("PATH", f"{fake_rpctool(tmp_path / 'bin', store)}:{os.environ['PATH']}")
    src = sources.GuestinfoSource()
    assert metadata.load_config(src).hostname == "node1"
    assert src.get("guestinfo.unset") is None
    src.set("guestinfo.arcbake.status", '{"state": "done"}')
    assert json.loads(store.read_text())["guestinfo.arcbake.status"] == '{"state": "done"}'
    assert isinstance(sources.make_source("auto", {}), sources.GuestinfoSource)


@pytest.mark.allow_subp("vmware-rpctool")
def test_real_rpctool_outside_vmware_is_a_clear_error() -> None:
    with pytest.raises(sources.SourceError, match="inside a VMware virtual machine"):
        sources.GuestinfoSource().get(KEY_CONFIG)


@pytest.mark.allow_subp("vmware-rpctool")
def test_auto_source_falls_back_to_env_then_fails_clearly() -> None:
    assert isinstance(sources.make_source("auto", {"VMX_GUESTINFO_ARCBAKE_CONFIG": "x"}), sources.EnvSource)
    with pytest.raises(sources.SourceError, match="no metadata source"):
        sources.make_source("auto", {})
    with pytest.raises(sources.SourceError, match="unknown --source"):
        sources.make_source("vmx", {})


def test_git_credentials_roundtrip_through_the_secrets_file(tmp_path: Path) -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"
    payload = {
        "sp_certificate_pem": pem,
        "git": {"cluster-config": {"https_user": "git", "https_key": "ghp_tokenvalue123"}},
    }
    src = DictSource({KEY_SECRETS: json.dumps(payload)})
    metadata.load_secrets(src, tmp_path, IID, persist=True)
    again = metadata.load_secrets(DictSource(), tmp_path, IID, persist=True)
    cred = again.git["cluster-config"]
    assert cred.https_key is not None and cred.https_key.get_secret_value() == "ghp_tokenvalue123"
    assert again.sp_certificate_pem is not None
    assert sorted(again.values()) == sorted([pem, "ghp_tokenvalue123"])


def test_secrets_the_config_needs_are_checked() -> None:
    from firstboot.contract import OnboardingConfig, OnboardingSecrets

    agent = OnboardingConfig.model_validate(onboarding_config(role="agent"))
    server = OnboardingConfig.model_validate(onboarding_config())
    assert metadata.check_secrets(agent, OnboardingSecrets()) == [
        "guestinfo.arcbake.secrets.k3s_token: required for an agent (the server's join token)"
    ]
    problems = metadata.check_secrets(server, OnboardingSecrets.model_validate({"git": {"nope": {}}}))
    assert problems == [
        "guestinfo.arcbake.secrets.sp_secret: required by arc.auth=secret",
        "guestinfo.arcbake.secrets.git.nope: no flux configuration named 'nope'",
    ]
