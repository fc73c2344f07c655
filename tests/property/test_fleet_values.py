"""Hostile strings in every string field of a fleet file (semantic mutations of a valid fleet, not just
wrong types): each document is refused with located issues, or everything it produces is inert where it
lands. Inert means: the clone's config reads back as the same model; no accepted value starts with `-` (an
option to az, kickstart or K3s) or holds a control character; the proxy files firstboot writes read back
to the same values through systemd's EnvironmentFile parser (double of env-file.c) and bash `source`;
the cloud-config user-data reads back through PyYAML with the same user and keys."""

from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from doubles import systemd_envfile
from hypothesis import given
from hypothesis import strategies as st

from builder import fleet
from firstboot import located_yaml, proxyenv
from firstboot.contract import OnboardingConfig
from property.counting import count
from property.strategies import hostile_text

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = yaml.safe_load((REPO / "examples/demo-fleet.yaml").read_text())
# Every section a clone-side string can sit in, present in the base so the mutation can reach it.
BASE["defaults"]["proxy"] = {
    "http_proxy": "http://proxy.example.internal:3128",
    "https_proxy": "http://proxy.example.internal:3128",
    "no_proxy": [".example.internal", "10.0.0.0/8"],
}
BASE["defaults"]["k3s"] = {"node_labels": {"site": "demo"}}
BASE["defaults"]["dns"] = {"upstream_servers": ["192.168.50.1"]}
# Mappings whose keys are the user's own: their keys are string fields too.
FREE_FORM = {"tags", "node_labels"}
# Accepted values that may start with '-' where they land: a tag value goes after `=` in `--tags k=v`.
DASH_OK = re.compile(r"(^|\.)arc\.tags\.[^.]+$")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _strings(doc: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], bool]]:
    """(path, is_key) of every string value, and of every key of a free-form mapping."""
    out: list[tuple[tuple[str | int, ...], bool]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if path and path[-1] in FREE_FORM:
                out.append(((*path, key), True))
            out += _strings(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _strings(value, (*path, index))
    elif isinstance(doc, str):
        out.append((path, False))
    return out


def _replace(doc: dict[str, Any], path: tuple[str | int, ...], is_key: bool, value: str) -> None:
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    if is_key:
        parent[value] = parent.pop(path[-1])
    else:
        parent[path[-1]] = value


def _walk(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted path, string) of every string value and key of a JSON document."""
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out.append((f"{path}.{key}".lstrip("."), str(key)))
            out += _walk(item, f"{path}.{key}")
        return out
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in _walk(item, f"{path}.{i}")]
    return [(path.lstrip("."), value)] if isinstance(value, str) else []


def _bash_reads(lines: list[str], names: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "proxy.sh"
        script.write_text("\n".join(lines) + "\n")
        printed = " ".join(f'"${{{n}}}"' for n in names)
        result = subprocess.run(
            [
                "bash",
                "--norc",
                "--noprofile",
                "-c",
                f'set -eu; . "$1"; printf "%s\\0" {printed}',
                "bash",
                str(script),
            ],
            capture_output=True,
            timeout=30,
            check=True,
            cwd=tmp,
        )
    return result.stdout.decode().split("\0")[:-1]


def _inert(vm: fleet.FleetVM) -> None:
    config = vm.config
    assert OnboardingConfig.model_validate_json(vm.config_json()) == config
    for path, text in _walk(config.model_dump(mode="json")):
        if path == "proxy.ca_bundle_pem":
            continue
        assert not CONTROL.search(text), (path, text)
        assert DASH_OK.search(path) or not text.startswith("-"), (path, text)
    env = proxyenv.proxy_environment(config.proxy, config.k3s)
    upper = {k: v for k, v in env.items() if k.isupper()}
    read = systemd_envfile.parse("\n".join(proxyenv.k3s_env_lines(config.proxy, config.k3s)) + "\n")
    assert read == {**upper, **{f"CONTAINERD_{k}": v for k, v in upper.items()}}
    if env:
        assert _bash_reads(proxyenv.profile_lines(config.proxy, config.k3s), list(env)) == list(env.values())
    userdata = yaml.safe_load(vm.userdata())
    assert userdata["users"][0]["name"] == vm.user
    assert userdata["users"][0].get("ssh_authorized_keys", []) == list(vm.ssh_authorized_keys)


@pytest.mark.fault(
    "hostile string (quotes, $(...), newline, leading '-', control characters) in any fleet string field",
    "FleetError naming file, line and key path, or every produced value inert where it lands",
)
@given(data=st.data())
def test_hostile_string_in_any_field(data: st.DataObject) -> None:
    count("fleet: hostile string fields")
    doc = copy.deepcopy(BASE)
    path, is_key = data.draw(st.sampled_from(_strings(doc)))
    _replace(doc, path, is_key, data.draw(hostile_text))
    text = yaml.safe_dump(doc, allow_unicode=True)
    try:
        parsed = fleet.parse_fleet(located_yaml.load_located(text, "fleet.yaml"), Path("fleet.yaml"))
    except located_yaml.InputError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert str(issue).startswith("fleet.yaml") and issue.message
        return
    for vm in parsed.vms:
        _inert(vm)


def test_the_base_fleet_is_valid_and_inert() -> None:
    parsed = fleet.parse_fleet(
        located_yaml.load_located(yaml.safe_dump(BASE), "fleet.yaml"), Path("fleet.yaml")
    )
    for vm in parsed.vms:
        _inert(vm)
