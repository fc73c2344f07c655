"""Hostile image specs: every generated document ends in an ImageSpec or a SpecError with key paths."""

from __future__ import annotations

import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import spec, yamlsrc
from property.counting import count
from property.strategies import alias_bomb, deep_nesting, hostile_bytes, mutated

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = yaml.safe_load((REPO / "examples" / "rocky9.yaml").read_text())
SECONDS = 5.0
MEMORY = 64 * 1024 * 1024


def _parse(text: str) -> spec.ImageSpec | yamlsrc.InputError:
    try:
        return spec.parse_spec(yamlsrc.load_located(text, "spec.yaml"))
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


def _check_issues(err: yamlsrc.InputError) -> None:
    assert err.issues, "an InputError must carry at least one issue"
    for issue in err.issues:
        assert issue.file == "spec.yaml"
        assert issue.message
        assert str(issue).startswith("spec.yaml")


def test_the_base_document_is_valid() -> None:
    # The mutations start from a valid spec: otherwise every example would fail for the same reason.
    assert isinstance(_parse(yaml.safe_dump(BASE)), spec.ImageSpec)


@pytest.mark.fault("image spec with wrong types, missing and unknown keys", "SpecError with every key path")
@given(case=mutated(BASE), as_json=st.booleans())
def test_mutated_spec(
    case: tuple[dict[str, Any], list[tuple[str, tuple[str | int, ...]]]], as_json: bool
) -> None:
    count("spec: mutated documents")
    doc, mutations = case
    text = yaml.safe_dump(doc, allow_unicode=True) if not as_json else __import__("json").dumps(doc)
    started = time.monotonic()
    result = _parse(text)
    assert time.monotonic() - started < SECONDS
    # Unknown keys added to a section of the valid base (a model, not a free-form mapping) must be reported.
    unknown = [
        p
        for kind, p in mutations
        if kind == "unknown"
        and _exists(doc, p)
        and _exists(BASE, p[:-1])
        and isinstance(_get(BASE, p[:-1]), dict)
    ]
    if isinstance(result, spec.ImageSpec):
        assert not unknown, f"unknown keys {unknown} were accepted"
        return
    _check_issues(result)
    reported = {i.path for i in result.issues}
    for path in unknown:
        assert yamlsrc.dotted(path) in reported, f"{yamlsrc.dotted(path)} not in {sorted(reported)}"


@pytest.mark.fault("image spec file with non-UTF-8 or binary bytes", "SpecError naming the file")
@given(data=hostile_bytes)
def test_arbitrary_bytes(data: bytes) -> None:
    count("spec: arbitrary bytes")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_bytes(data)
        try:
            spec.load_spec(path)
        except spec.SpecError as exc:
            assert exc.issues and all(i.file == str(path) for i in exc.issues)


@pytest.mark.fault("YAML alias bomb (billion laughs) in an image spec", "SpecError fast, bounded memory")
@settings(max_examples=6)
@given(text=alias_bomb("schema_version"))
def test_alias_bomb(text: str) -> None:
    count("spec: alias bombs")
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = _parse(text)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < SECONDS
    assert peak < MEMORY
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(result)


@pytest.mark.fault("image spec nested tens of thousands of levels deep", "SpecError, no RecursionError")
@settings(max_examples=8)
@given(text=deep_nesting("vsphere"))
def test_deep_nesting(text: str) -> None:
    count("spec: deep nesting")
    started = time.monotonic()
    result = _parse(text)
    # PyYAML's scanner is quadratic in flow depth until its composer hits the recursion limit: bounded,
    # but seconds on a loaded machine.
    assert time.monotonic() - started < 4 * SECONDS
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(result)


@pytest.mark.fault("image spec with a multi-megabyte value", "SpecError with the key path, no echo")
@settings(max_examples=5)
@given(size=st.integers(100_000, 1_000_000), key=st.sampled_from(["template_name", "folder", "datastore"]))
def test_huge_value(size: int, key: str) -> None:
    count("spec: huge values")
    doc = dict(BASE, vsphere=dict(BASE["vsphere"], **{key: "x" * size}))
    result = _parse(yaml.safe_dump(doc, width=2**31 - 1))
    assert isinstance(result, yamlsrc.InputError)
    _check_issues(result)
    assert f"vsphere.{key}" in {i.path for i in result.issues}
    # The message names the problem; it must not echo megabytes of input back.
    assert len(str(result)) < 10_000
