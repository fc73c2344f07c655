"""The status file, read and shown without pydantic: what keeps `firstboot status` lean.

`firstboot status` is what an operator (or a script polling with `--wait`) runs most; it only reads
`/var/lib/arcbake/status.json`, which `firstboot run` wrote through the `contract.Status` model. Loading
that model costs more than the rest of the command (pydantic), so a status file of the expected shape is
read with the standard library here; anything else (missing, unreadable, not the expected shape) goes
back to the model (`firstboot.cli`), which stays the authority on what a valid status is.

`text()` is the one text form of a status, for `status` and for what `run` prints at its end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from firstboot.fsutil import STATE_DIR, guest_path, read_state

STATUS_FILE = f"{STATE_DIR}/status.json"
STATES = ("pending", "running", "done", "failed")
# `firstboot status` exit codes: 0 done, 1 failed, 2 not finished.
EXIT_CODES = {"done": 0, "failed": 1}
NOT_FINISHED = 2


def load(root: Path) -> tuple[str, dict[str, Any]] | None:
    """(the file's JSON text, its data) when status.json has the shape firstboot writes; else None."""
    try:
        raw = read_state(guest_path(root, STATUS_FILE)).decode("utf-8")
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return (raw.strip(), data) if _well_formed(data) else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _optional_str(data: Mapping[str, Any], key: str) -> bool:
    return data.get(key) is None or isinstance(data.get(key), str)


def _well_formed(data: Any) -> bool:
    if (
        not isinstance(data, dict)
        or data.get("state") not in STATES
        or not isinstance(data.get("message"), str)
    ):
        return False
    if not (_optional_str(data, "step") and _optional_str(data, "remedy") and _when(data.get("updated"))):
        return False
    if data.get("generation") is not None and not isinstance(data.get("generation"), int):
        return False
    steps = data.get("steps", [])
    return isinstance(steps, list) and all(
        isinstance(t, dict)
        and isinstance(t.get("step"), str)
        and _when(t.get("started")) is not None
        and (t.get("ended") is None or _when(t.get("ended")) is not None)
        and isinstance(t.get("attempts"), int)
        and isinstance(t.get("outcome"), str)
        for t in steps
    )


def text(status: Mapping[str, Any]) -> str:
    """The status as lines of `key: value` and, when present, one line per step run.

    `status` is the JSON form (`Status.model_dump(mode="json")`, or status.json as loaded here).
    """
    lines = [f"state:   {status['state']}"]
    if status.get("step"):
        lines.append(f"step:    {status['step']}")
    lines.append(f"message: {status['message']}")
    if status.get("remedy"):
        lines.append(f"remedy:  {status['remedy']}")
    updated = _when(status.get("updated"))
    lines.append(f"updated: {updated.isoformat() if updated else status.get('updated')}")
    if status.get("generation") is not None:
        lines.append(f"secrets: generation {status['generation']}")
    steps = status.get("steps") or []
    if steps:
        lines.append("steps:")
        width = max(len(t["step"]) for t in steps)
        for t in steps:
            started, ended = _when(t["started"]), _when(t.get("ended"))
            took = "       -"
            if started is not None and ended is not None:
                took = f"{max(0.0, (ended - started).total_seconds()):8.1f}s"
            tries = f", {t['attempts']} attempts" if t["attempts"] > 1 else ""
            shown = started.isoformat() if started else t["started"]
            lines.append(f"  {t['step']:<{width}} {took}  {t['outcome']}{tries}  {shown}")
    return "\n".join(lines)
