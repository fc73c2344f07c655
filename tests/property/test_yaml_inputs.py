"""Hostile image specs and fleet files: every generated document ends in the parsed model or in the
documented error (SpecError / FleetError: every problem with file, line and key path), never a traceback,
never a hang, in bounded memory. Both parsers share firstboot.located_yaml (line-tracking YAML loading)."""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import fleet, spec
from firstboot import located_yaml as yamlsrc
from property.counting import count, scaled
from property.strategies import alias_bomb, deep_nesting, hostile_bytes, mutated

REPO = Path(__file__).resolve().parents[2]
SECONDS = 5.0
MEMORY = 64 * 1024 * 1024
# Mappings whose keys are the user's own (tags, labels): an unknown key there is not an error.
FREE_FORM = {"tags", "labels", "node_labels"}


@dataclass(frozen=True)
class Target:
    """One YAML input of builder: its valid example, how to parse text and files, its error type."""

    name: str
    base: dict[str, Any]
    parse: Callable[[yamlsrc.LocatedYaml], object]
    load: Callable[[Path], object]
    error: type[yamlsrc.InputError]
    huge_section: str  # a mapping of string fields at the top level, for huge values


SPEC = Target(
    "spec",
    yaml.safe_load((REPO / "examples/rocky9.yaml").read_text()),
    spec.parse_spec,
    spec.load_spec,
    spec.SpecError,
    "vsphere",
)
FLEET = Target(
    "fleet",
    yaml.safe_load((REPO / "examples/demo-fleet.yaml").read_text()),
    lambda located: fleet.parse_fleet(located, Path("fleet.yaml")),
    fleet.load_fleet,
    fleet.FleetError,
    "vsphere",
)
TARGETS = pytest.mark.parametrize("target", [SPEC, FLEET], ids=["spec", "fleet"])


def _parse(target: Target, text: str) -> object:
    try:
        return target.parse(yamlsrc.load_located(text, f"{target.name}.yaml"))
    except yamlsrc.InputError as exc:
        return exc


def _exists(doc: Any, path: tuple[str | int, ...]) -> bool:
    for part in path:
        in_dict = isinstance(doc, dict) and part in doc
        in_list = isinstance(doc, list) and isinstance(part, int) and part < len(doc)
        if not (in_dict or in_list):
            return False
        doc = doc[part]
    return True


def _get(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _check_issues(target: Target, err: yamlsrc.InputError) -> None:
    assert err.issues, "an InputError must carry at least one issue"
    for issue in err.issues:
        assert issue.file == f"{target.name}.yaml"
        assert issue.message
        assert str(issue).startswith(f"{target.name}.yaml")


@TARGETS
def test_the_base_document_is_valid(target: Target) -> None:
    # The mutations start from a valid document: otherwise every example would fail for the same reason.
    result = _parse(target, yaml.safe_dump(target.base))
    assert not isinstance(result, yamlsrc.InputError), result


@TARGETS
@pytest.mark.fault(
    "spec/fleet file with wrong types, missing and unknown keys", "error listing every key path"
)
@given(data=st.data(), as_json=st.booleans())
def test_mutated_document(target: Target, data: st.DataObject, as_json: bool) -> None:
    count(f"{target.name}: mutated documents")
    doc, mutations = data.draw(mutated(target.base))
    text = json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    started = time.monotonic()
    result = _parse(target, text)
    assert time.monotonic() - started < SECONDS
    # Unknown keys added to a section of the valid base (a model, not a free-form mapping) must be reported.
    unknown = [
        p
        for kind, p in mutations
        if kind == "unknown"
        and _exists(doc, p)
        and _exists(target.base, p[:-1])
        and isinstance(_get(target.base, p[:-1]), dict)
        and not FREE_FORM & {str(x) for x in p[:-1]}
    ]
    if not isinstance(result, yamlsrc.InputError):
        assert not unknown, f"unknown keys {unknown} were accepted"
        return
    assert isinstance(result, target.error) or type(result) is yamlsrc.InputError
    _check_issues(target, result)
    reported = {i.path for i in result.issues}
    for path in unknown:
        assert yamlsrc.dotted(path) in reported, f"{yamlsrc.dotted(path)} not in {sorted(reported)}"


@TARGETS
@pytest.mark.fault("spec/fleet file with non-UTF-8 or binary bytes", "error naming the file, no traceback")
@given(data=hostile_bytes)
def test_arbitrary_bytes(target: Target, data: bytes) -> None:
    count(f"{target.name}: arbitrary bytes")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{target.name}.yaml"
        path.write_bytes(data)
        try:
            target.load(path)
        except target.error as exc:
            assert exc.issues and all(i.file == str(path) for i in exc.issues)


@TARGETS
@pytest.mark.fault("YAML alias bomb (billion laughs) in a spec/fleet file", "error at once, bounded memory")
@settings(max_examples=scaled(4))
@given(data=st.data())
def test_alias_bomb(target: Target, data: st.DataObject) -> None:
    count(f"{target.name}: alias bombs")
    text = data.draw(alias_bomb("schema_version"))
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = _parse(target, text)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < 2 * SECONDS
    assert peak < MEMORY
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(target, result)


@TARGETS
@pytest.mark.fault("spec/fleet file nested tens of thousands of levels deep", "error, no RecursionError")
@settings(max_examples=scaled(8))
@given(data=st.data())
def test_deep_nesting(target: Target, data: st.DataObject) -> None:
    count(f"{target.name}: deep nesting")
    text = data.draw(deep_nesting("vsphere"))
    started = time.monotonic()
    result = _parse(target, text)
    assert time.monotonic() - started < SECONDS
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(target, result)


@TARGETS
@pytest.mark.fault("spec/fleet file with a multi-megabyte value", "error with the key path, input not echoed")
@settings(max_examples=scaled(4))
@given(data=st.data())
def test_huge_value(target: Target, data: st.DataObject) -> None:
    count(f"{target.name}: huge values")
    size = data.draw(st.integers(100_000, 1_000_000))
    section = dict(target.base[target.huge_section])
    key = data.draw(st.sampled_from(sorted(k for k, v in section.items() if isinstance(v, str))))
    doc = dict(target.base, **{target.huge_section: dict(section, **{key: "x" * size})})
    result = _parse(target, yaml.safe_dump(doc, width=2**31 - 1))
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(target, result)
    assert f"{target.huge_section}.{key}" in {i.path for i in result.issues}
    # The message names the problem; it must not echo megabytes of input back.
    assert len(str(result)) < 10_000


@pytest.mark.fault(
    "fleet VM entry or defaults with `arc: null` / `secrets: null`", "FleetError, no TypeError"
)
@pytest.mark.parametrize("where", ["vm", "defaults"])
@pytest.mark.parametrize("key", ["arc", "secrets", "tags"])
def test_null_sections_in_a_fleet(where: str, key: str) -> None:
    # Found by the long profile: `arc: null` in a VM entry crashed the defaults merge with a TypeError.
    doc = json.loads(json.dumps(FLEET.base))
    (doc["vms"][0] if where == "vm" else doc["defaults"])[key] = None
    result = _parse(FLEET, yaml.safe_dump(doc))
    if isinstance(result, yamlsrc.InputError):
        _check_issues(FLEET, result)
