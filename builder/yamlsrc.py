"""YAML loading that remembers the line of every key, so validation errors can point at `FILE:LINE`.

PyYAML's composer keeps a start mark on every node; we walk the node tree once to record the line of
each dotted path (`k3s.version` -> 12, `time.ntp_servers.1` -> 30) and then construct plain data from
the same tree. Duplicate keys, which PyYAML silently resolves to the last one, are reported as issues.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from firstboot import yamlsafe

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Issue:
    """One problem in an input file: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top level)'}: {self.message}"


class InputError(Exception):
    """An input file is invalid; `issues` holds every problem found, in file order."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.line or 0, i.path))
        super().__init__("\n".join(str(i) for i in self.issues))


def dotted(path: Iterable[str | int]) -> str:
    """`("k3s", "sha256", "binary")` -> `k3s.sha256.binary`; list indexes become `ntp_servers.0`."""
    return ".".join(str(p) for p in path)


@dataclass
class LocatedYaml:
    """Parsed YAML data plus the line of every key path."""

    data: Any
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line of the deepest known prefix of `path` (a missing key points at its parent)."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), None)


# A spec or fleet file is a few hundred nodes. YAML aliases let a 1 KB document stand for billions of
# nodes ("billion laughs"): walking or validating that expanded tree never ends, so the walk (which sees
# every alias expanded, exactly as validation would) stops at a node budget and a depth cap.
MAX_NODES = 100_000
MAX_DEPTH = yamlsafe.MAX_DEPTH


class _TooLarge(Exception):
    def __init__(self, message: str, path: PathKey = ()) -> None:
        super().__init__(message)
        self.path = path


def _walk(
    node: yaml.Node,
    path: PathKey,
    out: dict[PathKey, int],
    dups: list[tuple[PathKey, int]],
    budget: list[int] | None = None,
) -> None:
    budget = budget if budget is not None else [MAX_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(f"the document expands to more than {MAX_NODES} nodes (YAML aliases?)")
    if len(path) > MAX_DEPTH:
        raise _TooLarge(f"nested deeper than {MAX_DEPTH} levels", path[:4])
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                dups.append((child, line))
            seen.add(key)
            out[child] = line
            _walk(value_node, child, out, dups, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            out[child] = item.start_mark.line + 1
            _walk(item, child, out, dups, budget)


def load_located(text: str, file: str) -> LocatedYaml:
    """Parse `text` (named `file` in messages); raise InputError on a syntax error or duplicate key."""
    if yamlsafe.flow_depth_exceeds(text, MAX_DEPTH):
        raise InputError([Issue(file, None, "", f"nested deeper than {MAX_DEPTH} levels")])
    loader = None
    try:
        # Inside the try: the reader rejects NUL and other non-printable characters in the constructor.
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return LocatedYaml(None, file, {(): 1})
        lines: dict[PathKey, int] = {(): node.start_mark.line + 1}
        dups: list[tuple[PathKey, int]] = []
        _walk(node, (), lines, dups)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise InputError([Issue(file, line, "", f"YAML syntax error: {message}")]) from None
    except _TooLarge as exc:
        where = dotted(exc.path) + (".(...)" if exc.path else "")
        raise InputError([Issue(file, None, where, str(exc))]) from None
    except RecursionError:
        # PyYAML's composer recurses once per nesting level.
        raise InputError([Issue(file, None, "", "nested too deeply to parse")]) from None
    except yaml.YAMLError as exc:
        raise InputError([Issue(file, None, "", f"YAML error: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if dups:
        raise InputError([Issue(file, line, dotted(p), "duplicate key") for p, line in dups])
    return LocatedYaml(data, file, lines)


def read_located(path: Path) -> LocatedYaml:
    """Read and parse a YAML file; unreadable files become an InputError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError([Issue(str(path), None, "", f"cannot read: {exc}")]) from None
    return load_located(text, str(path))
