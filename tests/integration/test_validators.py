"""Every validator, for real, on every variant; artifacts broken on purpose are caught (exit 4, CLI)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder import validators
from builder.cli import cli
from builder.rc import RC
from builder.render import render
from builder.spec import load_spec
from builder.validators import Status, run_validators

REPO = Path(__file__).resolve().parents[2]
TOOLS = (
    "ksvalidator",
    "packer",
    "chronyd",
    "firewall-offline-cmd",
    "systemd-analyze",
    "shellcheck",
    "cloud-init",
)
VARIANTS = ["rocky8", "rocky9", "rhel8", "rhel9", "demo-image"]
CA_PEM = "-----BEGIN CERTIFICATE-----\n    MIIBexampleexampleexample\n    -----END CERTIFICATE-----\n"

pytestmark = [pytest.mark.integration, pytest.mark.allow_subp(*TOOLS)]


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_every_validator_passes_on_every_variant(tmp_path: Path, name: str) -> None:
    result = render(load_spec(REPO / "examples" / f"{name}.yaml"), tmp_path / "build")
    start = time.monotonic()
    outcomes = run_validators(result.out_dir)
    elapsed = time.monotonic() - start
    assert [o.name for o in outcomes] == list(validators.VALIDATORS)
    assert {o.name: o.status for o in outcomes} == {n: Status.PASSED for n in validators.VALIDATORS}, [
        (o.name, o.message) for o in outcomes if o.status is not Status.PASSED
    ]
    assert elapsed < 60


@pytest.mark.slow
def test_proxy_with_ca_variant_validates(tmp_path: Path) -> None:
    text = (REPO / "examples/rhel9.yaml").read_text()
    text = text.replace(
        "  no_proxy: [.example.internal, 10.0.0.0/8]\n",
        "  no_proxy: [.example.internal, 10.0.0.0/8]\n  ca_bundle_pem: |\n    " + CA_PEM,
    )
    spec_path = tmp_path / "proxy.yaml"
    spec_path.write_text(text)
    code, out, err = run_cli("validate", str(spec_path), "--format", "json")
    assert code == RC.OK, out + err
    doc = json.loads(out)
    assert doc["ok"] is True
    assert {v["status"] for v in doc["validators"]} == {"passed"}


def _append(rel: str, text: str) -> Callable[[Path], None]:
    def apply(build: Path) -> None:
        with (build / rel).open("a", encoding="utf-8") as handle:
            handle.write(text)

    return apply


def _replace(rel: str, old: str, new: str) -> Callable[[Path], None]:
    def apply(build: Path) -> None:
        path = build / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {rel}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return apply


UNIT = "rootfs/etc/systemd/system/arcbake-firstboot.service"
ROTATE_UNIT = "rootfs/etc/systemd/system/arcbake-rotate.service"
ROTATE_TIMER = "rootfs/etc/systemd/system/arcbake-rotate.timer"

# (case, variant, validator, breakage, fragment of the tool's own message)
BROKEN = [
    (
        "ks-rhel8-timesource",
        "rocky8",
        "kickstart",
        _append("http/ks.cfg", "timesource --ntp-server=a\n"),
        "Unknown command: timesource",
    ),
    (
        "ks-bad-option",
        "rocky9",
        "kickstart",
        _replace("http/ks.cfg", "selinux --enforcing", "selinux --sometimes"),
        "unrecognized arguments: --sometimes",
    ),
    (
        "chrony-directive",
        "rocky9",
        "chrony",
        _append("rootfs/etc/chrony.conf", "makestepp 1 3\n"),
        "Invalid directive",
    ),
    (
        "zone-protocol",
        "rocky9",
        "firewalld",
        _replace("rootfs/etc/firewalld/zones/public.xml", 'protocol="tcp"', 'protocol="tcpx"'),
        "INVALID_PROTOCOL",
    ),
    (
        "unit-execstart",
        "rocky9",
        "systemd",
        _replace(UNIT, "/opt/arcbake/bin/firstboot run", "/opt/arcbake/bin/fb run"),
        "is not executable",
    ),
    (
        "unit-unknown-key",
        "rocky9",
        "systemd",
        _replace(UNIT, "Type=oneshot", "Type=oneshot\nRemainAfterExitt=yes"),
        "Unknown key 'RemainAfterExitt'",
    ),
    ("unit-bad-type", "rocky9", "systemd", _replace(UNIT, "Type=oneshot", "Type=oneshoot"), "oneshoot"),
    (
        "timer-unknown-key",
        "rocky9",
        "systemd",
        _replace(ROTATE_TIMER, "OnUnitActiveSec=", "OnUnitActiveSecs="),
        "Unknown key 'OnUnitActiveSecs' in section [Timer]",
    ),
    (
        "rotate-unit-execstart",
        "rocky9",
        "systemd",
        _replace(ROTATE_UNIT, "/opt/arcbake/bin/firstboot rotate", "/opt/arcbake/bin/fb rotate"),
        "is not executable",
    ),
    (
        "script-unquoted",
        "rocky9",
        "shellcheck",
        _append("scripts/40-enable-units.sh", "echo $ARCBAKE_UNQUOTED\n"),
        "SC2086",
    ),
    (
        "cloud-config-type",
        "rocky9",
        "cloud-init",
        _replace(
            "rootfs/etc/cloud/cloud.cfg.d/90-arcbake-vmware.cfg",
            "manage_resolv_conf: false",
            "manage_resolv_conf: maybe",
        ),
        "'maybe' is not of type 'boolean'",
    ),
    (
        "packer-argument",
        "rocky9",
        "packer",
        _replace(
            "packer/sources.pkr.hcl",
            '  disk_controller_type = ["pvscsi"]\n',
            '  disk_controller_type = ["pvscsi"]\n  bogus_arg            = 1\n',
        ),
        "bogus_arg",
    ),
    (
        "packer-fmt",
        "rocky9",
        "packer",
        _replace("packer/build.pkr.hcl", "  sources = [", "  sources      = ["),
        "build.pkr.hcl",
    ),
]


@pytest.mark.parametrize(
    ("variant", "validator", "breakage", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_artifact_is_caught(
    tmp_path: Path, variant: str, validator: str, breakage: Callable[[Path], None], fragment: str
) -> None:
    build = tmp_path / "build"
    render(load_spec(REPO / "examples" / f"{variant}.yaml"), build)
    code, out, _ = run_cli("validate", "--build-dir", str(build), "--only", validator)
    assert code == RC.OK, out
    breakage(build)
    code, out, err = run_cli("validate", "--build-dir", str(build), "--only", validator)
    assert code == RC.ARTIFACT_REJECTED, out + err
    assert re.search(rf"^failed\s+{re.escape(validator)}\s", out, re.M), out
    assert fragment in out, out
    assert f"rejected by {validator}" in err


def test_one_broken_artifact_among_passing_ones(tmp_path: Path) -> None:
    build = tmp_path / "build"
    render(load_spec(REPO / "examples/rhel8.yaml"), build)
    _append("rootfs/etc/chrony.conf", "bogus 1\n")(build)
    code, out, _ = run_cli("validate", "--build-dir", str(build), "--format", "json")
    assert code == RC.ARTIFACT_REJECTED
    statuses = {v["name"]: v["status"] for v in json.loads(out)["validators"]}
    assert statuses.pop("chrony") == "failed"
    assert set(statuses.values()) == {"passed"}


def test_missing_tool_is_reported_as_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "build"
    render(load_spec(REPO / "examples/rocky9.yaml"), build)
    real = validators.find_tool
    monkeypatch.setattr(validators, "find_tool", lambda name: None if name == "chronyd" else real(name))
    code, out, _ = run_cli("validate", "--build-dir", str(build), "--only", "chrony", "--only", "shellcheck")
    assert code == RC.OK
    assert re.search(r"^skipped\s+chrony\s+chronyd is not installed", out, re.M), out
    assert re.search(r"^passed\s+shellcheck\s", out, re.M), out


def test_content_library_default_item_name_passes_packer_validate(tmp_path: Path) -> None:
    # Packer refuses a library item named like the VM it is made from; the default must differ.
    text = (REPO / "examples/demo-image.yaml").read_text()
    assert "  convert_to_template: true\n" in text
    text = text.replace(
        "  convert_to_template: true\n", "  convert_to_template: false\n  content_library: {name: lib1}\n"
    )
    spec_path = tmp_path / "cl.yaml"
    spec_path.write_text(text)
    result = render(load_spec(spec_path), tmp_path / "build")
    pkrvars = json.loads((result.out_dir / "packer" / "arcbake.auto.pkrvars.json").read_text())
    assert pkrvars["content_library"] == "lib1"
    assert pkrvars["content_library_item"] == f"{pkrvars['vm_name']}-item"
    outcomes = {o.name: o for o in run_validators(result.out_dir, only=["packer"])}
    assert outcomes["packer"].status is Status.PASSED, outcomes["packer"].message
