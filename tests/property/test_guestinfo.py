"""Hostile guestinfo: the decoder (firstboot.encoding) and the config parsing of the metadata step
(firstboot.metadata.load_config) get generated values; each ends in decoded bytes / a valid
OnboardingConfig, or in DecodeError / MetadataError whose every problem starts with a key path. Never a
traceback, never a hang, bounded memory (a gzip bomb is refused after reading at most the cap)."""

from __future__ import annotations

import base64
import gzip
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.guestinfo import DictSource, onboarding_config
from hypothesis import given, settings
from hypothesis import strategies as st

from firstboot import encoding, metadata, sources
from firstboot.contract import ENCODING_SUFFIX, KEY_CONFIG, OnboardingConfig
from property.counting import count, scaled
from property.strategies import alias_bomb, deep_nesting, hostile_bytes, mutated

SECONDS = 5.0
BASE: dict[str, Any] = onboarding_config(ntp_port=11123, dns_port=5353)
ENCODING_NAMES = st.sampled_from(
    ["gzip+base64", "gz+b64", "base64", "b64", "", "GZIP+BASE64", "rot13", "gzip"]
)


def _load(value: str, enc: str | None) -> OnboardingConfig | metadata.MetadataError:
    data = {KEY_CONFIG: value}
    if enc is not None:
        data[KEY_CONFIG + ENCODING_SUFFIX] = enc
    try:
        return metadata.load_config(DictSource(data))
    except metadata.MetadataError as exc:
        return exc


def _check_problems(err: metadata.MetadataError, doc: Any = None) -> None:
    """Every problem starts with a key path: the key, a top-level key of the input or a model field."""
    assert err.problems
    roots = {KEY_CONFIG, "(top level)", *OnboardingConfig.model_fields}
    roots |= {str(k) for k in doc} if isinstance(doc, dict) else set()
    for problem in err.problems:
        assert any(problem.startswith(root) for root in roots), problem
        assert ": " in problem, problem
        assert "lax-or-strict" not in problem and "function-after" not in problem, problem
        assert len(problem) < 2000, problem[:200]


@pytest.mark.fault(
    "undecodable guestinfo value (bad base64, unknown encoding, junk)", "DecodeError, no traceback"
)
@given(value=st.text(max_size=300), enc=ENCODING_NAMES)
def test_decode_arbitrary_values(value: str, enc: str) -> None:
    count("guestinfo: decode arbitrary values")
    try:
        out = encoding.decode(value, enc)
    except encoding.DecodeError as exc:
        assert str(exc)
        return
    assert isinstance(out, bytes)


@given(payload=st.binary(max_size=5000), enc=st.sampled_from(["gzip+base64", "base64"]))
def test_encode_decode_round_trip(payload: bytes, enc: str) -> None:
    count("guestinfo: round trip")
    assert encoding.decode(encoding.encode(payload, enc), enc) == payload


@pytest.mark.fault("truncated or bit-flipped gzip+base64 value", "DecodeError (invalid gzip), no traceback")
@given(payload=st.binary(min_size=1, max_size=3000), cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_damaged_gzip(payload: bytes, cut: int, flip: int) -> None:
    count("guestinfo: damaged gzip")
    raw = bytearray(gzip.compress(payload, mtime=0))
    raw = raw[: max(1, cut % (len(raw) + 1))]
    raw[flip % len(raw)] ^= 0x5A
    try:
        encoding.decode(base64.b64encode(bytes(raw)).decode(), "gzip+base64")
    except encoding.DecodeError:
        return


@pytest.mark.fault("gzip bomb in guestinfo.arcbake.config (up to 64 MiB of zeros)", "refused, not expanded")
@settings(max_examples=scaled(5))
@given(megabytes=st.integers(5, 64))
def test_gzip_bomb_is_refused_in_bounded_memory(megabytes: int) -> None:
    count("guestinfo: gzip bombs")
    value = base64.b64encode(gzip.compress(b"\0" * (megabytes << 20), compresslevel=9)).decode()
    tracemalloc.start()
    try:
        result = _load(value, "gzip+base64")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert isinstance(result, metadata.MetadataError)
    assert "refused, not expanded" in str(result)
    # At most a few times the cap (gzip's read buffers), whatever the bomb's size.
    assert peak < 4 * encoding.MAX_DECODED
    _check_problems(result)


@pytest.mark.fault(
    "config with wrong types, missing and unknown keys", "metadata fails listing every key path"
)
@given(data=st.data(), enc=st.sampled_from(["gzip+base64", "base64", ""]), as_yaml=st.booleans())
def test_mutated_config(data: st.DataObject, enc: str, as_yaml: bool) -> None:
    count("guestinfo: mutated configs")
    doc, mutations = data.draw(mutated(BASE))
    text = yaml.safe_dump(doc, allow_unicode=True) if as_yaml else json.dumps(doc)
    started = time.monotonic()
    result = _load(encoding.encode(text, enc) if enc else text, enc)
    assert time.monotonic() - started < SECONDS
    if isinstance(result, OnboardingConfig):
        return
    _check_problems(result, doc)
    # Unknown keys in the model's own sections must be named (not in free-form mappings).
    paths = [p for kind, p in mutations if kind == "unknown"]
    for path in paths:
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(parent, dict) or path[-1] not in parent or "node_labels" in path or "tags" in path:
            continue
        dotted = ".".join(str(p) for p in path)
        # Only top-level and section keys are checked: a sibling error may stop pydantic short.
        if len(path) <= 2 and isinstance(_base_at(path[:-1]), dict):
            assert any(problem.startswith(dotted) for problem in result.problems), (dotted, result.problems)


def _base_at(path: tuple[str | int, ...]) -> Any:
    node: Any = BASE
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@pytest.mark.fault(
    "non-UTF-8 or binary guestinfo.arcbake.config", "metadata fails: not UTF-8 / not a mapping"
)
@given(payload=st.binary(max_size=2000), enc=st.sampled_from(["gzip+base64", "base64"]))
def test_binary_config(payload: bytes, enc: str) -> None:
    count("guestinfo: binary configs")
    result = _load(encoding.encode(payload, enc), enc)
    assert isinstance(result, metadata.MetadataError)
    try:
        # The payload's own keys (when it happens to be a YAML mapping) are key paths too.
        doc = yaml.safe_load(payload.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        doc = None
    _check_problems(result, doc)


@pytest.mark.fault("YAML alias bomb in guestinfo.arcbake.config", "metadata fails at once, bounded memory")
@settings(max_examples=scaled(5))
@given(data=st.data(), key=st.sampled_from(["hostname", "proxy", "flux", "k3s", "time"]))
def test_config_alias_bomb(data: st.DataObject, key: str) -> None:
    count("guestinfo: alias bombs")
    text = data.draw(alias_bomb(key))
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = _load(encoding.encode(text, "gzip+base64"), "gzip+base64")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < 2 * SECONDS
    assert peak < 64 << 20
    assert isinstance(result, metadata.MetadataError)
    _check_problems(result, yaml.safe_load(text))


@pytest.mark.fault(
    "guestinfo.arcbake.config nested thousands of levels deep", "metadata fails, no RecursionError"
)
@settings(max_examples=scaled(6))
@given(data=st.data())
def test_config_deep_nesting(data: st.DataObject) -> None:
    count("guestinfo: deep nesting")
    text = data.draw(deep_nesting("hostname"))
    started = time.monotonic()
    result = _load(encoding.encode(text, "gzip+base64"), "gzip+base64")
    assert time.monotonic() - started < 4 * SECONDS
    assert isinstance(result, metadata.MetadataError)
    _check_problems(result)


@pytest.mark.fault(
    "--source file:PATH with binary, deeply nested or aliased content", "SourceError naming file"
)
@settings(max_examples=scaled(20))
@given(
    data=st.one_of(
        hostile_bytes,
        deep_nesting("guestinfo.arcbake.config").map(str.encode),
        alias_bomb("guestinfo.arcbake.config").map(str.encode),
    )
)
def test_metadata_file_source(data: bytes) -> None:
    count("guestinfo: --source file contents")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "meta.yaml"
        path.write_bytes(data)
        started = time.monotonic()
        try:
            sources.FileSource(path)
        except sources.SourceError as exc:
            assert str(path) in str(exc)
        assert time.monotonic() - started < 4 * SECONDS
