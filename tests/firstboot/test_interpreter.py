"""firstboot.interpreter: collection held during start-up and given back once; the engine gives it back
when it has loaded the step modules."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.guestinfo import DictSource

from firstboot import interpreter
from firstboot.contract import KEY_METADATA
from firstboot.engine import Engine, build_context


@pytest.fixture(autouse=True)
def _collection_restored() -> Iterator[None]:
    yield
    interpreter.release_collection()
    gc.enable()


def test_held_collection_is_given_back_once_with_start_up_objects_frozen() -> None:
    frozen = gc.get_freeze_count()
    interpreter.hold_collection()
    assert not gc.isenabled()
    interpreter.hold_collection()  # holding twice is one hold
    interpreter.release_collection()
    assert gc.isenabled() and gc.get_freeze_count() > frozen
    gc.disable()
    interpreter.release_collection()  # nothing held any more: the caller's choice stands
    assert not gc.isenabled()


def test_collection_disabled_by_someone_else_is_not_turned_on() -> None:
    gc.disable()
    interpreter.hold_collection()
    interpreter.release_collection()
    assert not gc.isenabled()


def test_the_engine_gives_collection_back_once_it_has_loaded_the_steps(tmp_path: Path) -> None:
    src = DictSource()
    src.data[KEY_METADATA] = json.dumps({"instance-id": "vm-1"})
    engine = Engine(build_context(tmp_path, src, env={}, time_scale=1.0))
    interpreter.hold_collection()
    assert [s.name for s in engine.steps][:2] == ["metadata", "hostname"]
    assert gc.isenabled()
