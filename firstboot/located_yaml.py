"""Located YAML: parse remembering the line of every key, validate into a model, report every problem as
`FILE:LINE: dotted.key.path: message`.

One validator for every YAML input of the project, parametrised by its root model: builder's image spec
and fleet file, firstboot's guest metadata (`guestinfo.arcbake.config`). An "unknown key" message lists
the keys of the model that stands at that path under the given root, so a fleet error lists fleet keys.

PyYAML's composer keeps a start mark on every node; the node tree is walked once to record the line of
each key path (`k3s.version` -> 12, `time.ntp_servers.1` -> 30), then plain data is constructed from the
same tree. Duplicate keys, which PyYAML silently resolves to the last one, are reported as issues.

Lives in firstboot (PyYAML and pydantic only) because firstboot never imports builder.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from firstboot import yamlsafe
from firstboot.boundedread import BoundedReadError, read_bounded

PathKey = tuple[str | int, ...]
# Spec and fleet files are a few KiB; a cap keeps `builder validate /dev/zero`-like inputs from reading
# without end (the regular-file check refuses devices and FIFOs outright).
MAX_INPUT_BYTES = 1024 * 1024


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
    """An input file is invalid; `issues` holds every problem found, in file order, without repeats."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = sorted(dict.fromkeys(issues), key=lambda i: (i.line or 0, i.path))
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


# libyaml's parser and composer (PyYAML's C extension) where it is built: a 1,000-VM fleet file composes
# many times faster than in pure Python, and its nodes carry the same start marks (lines). Documents it
# rejects go to the pure-Python loader (same acceptance and messages as before); the flow-depth, node and
# depth caps below apply to both.
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A spec or fleet file is a few hundred nodes. YAML aliases let a 1 KB document stand for billions of
# nodes ("billion laughs"): walking or validating that expanded tree never ends, so the walk (which sees
# every alias expanded, exactly as validation would) stops at a node budget and a depth cap.
MAX_NODES = 100_000
MAX_DEPTH = yamlsafe.MAX_DEPTH


# A `\ud800`-style escape in a double-quoted scalar (JSON writes astral characters so) decodes to a lone
# surrogate, which is not text: pydantic rejects a whole mapping holding such a key (hiding every other
# problem in it) and a terminal cannot print it. Such keys are kept escaped (`\ud800`), so they are
# reported as the unknown or invalid keys they are, with the rest of the document's problems.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable_key(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(key) else key


def _escape_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {(_printable_key(k) if isinstance(k, str) else k): _escape_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_escape_keys(v) for v in data]
    return data


class _TooLarge(Exception):
    def __init__(self, message: str, path: PathKey = ()) -> None:
        super().__init__(message)
        self.path = path


def _walk(
    node: yaml.Node,
    path: PathKey,
    out: dict[PathKey, int],
    dups: list[tuple[PathKey, int]],
    budget: list[int],
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(f"the document expands to more than {MAX_NODES} nodes (YAML aliases?)")
    if len(path) > MAX_DEPTH:
        raise _TooLarge(f"nested deeper than {MAX_DEPTH} levels", path[:4])
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = _printable_key(str(key_node.value))
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
    """Parse `text` (named `file` in messages); raise InputError on a syntax error or duplicate key.
    JSON is YAML too: guest metadata may be either."""
    if yamlsafe.flow_depth_exceeds(text, MAX_DEPTH):
        raise InputError([Issue(file, None, "", f"nested deeper than {MAX_DEPTH} levels")])
    loader = None
    try:
        # Inside the try: the reader rejects NUL and other non-printable characters in the constructor.
        loader = _LOADER(text)
        try:
            node = loader.get_single_node()
        except yaml.YAMLError:
            # libyaml refuses a few documents PyYAML reads (a lone surrogate escape in a JSON string) and
            # words its errors differently: whatever it rejects, the pure-Python loader has the last word.
            loader.dispose()
            loader = yaml.SafeLoader(text)
            node = loader.get_single_node()
        if node is None:
            return LocatedYaml(None, file, {(): 1})
        lines: dict[PathKey, int] = {(): node.start_mark.line + 1}
        dups: list[tuple[PathKey, int]] = []
        _walk(node, (), lines, dups, [MAX_NODES])
        data = loader.construct_document(node)
        if _SURROGATE.search(text) or "\\u" in text or "\\U" in text:
            data = _escape_keys(data)
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


def read_located(
    path: Path, error: type[InputError] = InputError, limit: int = MAX_INPUT_BYTES
) -> LocatedYaml:
    """Read (a regular file, at most `limit` bytes) and parse a YAML file; problems raised as `error`."""
    try:
        text = read_bounded(path, limit).decode("utf-8")
        return load_located(text, str(path))
    except BoundedReadError as exc:
        raise error([Issue(str(path), None, "", str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise error([Issue(str(path), None, "", f"not UTF-8 text (byte {exc.start})")]) from None
    except InputError as exc:
        raise error(exc.issues) from None


# Validation -------------------------------------------------------------------------------------------

# Keys people paste into input files by habit; they get a pointed message instead of "unknown key".
_CREDENTIAL_KEYS = {
    "password",
    "passwd",
    "user",
    "username",
    "server",
    "token",
    "secret",
    "activation_key",
    "org",
    "organization",
    "org_id",
    "ssh_password",
    "client_secret",
}
_CREDENTIAL_WORDS = ("password", "secret", "token", "private_key", "credential")


@dataclass(frozen=True)
class Hints:
    """Friendlier messages of one input kind: per regex (a field's pattern) and for credential-like keys."""

    patterns: Mapping[str, str] = field(default_factory=dict)
    credentials: str | None = None
    # (parent key, key) -> where that key's job went, for keys an input kind no longer accepts.
    moved: Mapping[tuple[str, str], str] = field(default_factory=dict)


NO_HINTS = Hints()
# Echo a wrong-typed input briefly: an alias-expanded list can hold megabytes.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 3, 3, 40, 40


def _trim_loc(data: Any, loc: PathKey) -> PathKey:
    # pydantic appends union member tags ("str", "int", "IPv4Address") after a scalar; keep the path only
    # as far as it walks through the input data, plus one missing key (for "Field required").
    out: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(current, dict):
            out.append(part)
            if part not in current:
                break
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            out.append(part)
            current = current[part]
        else:
            break
    return tuple(out)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    # Unwrap Optional[...] / list[...] / dict[...] / Annotated[...] down to a model class, if there is one.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def allowed_keys(root: type[BaseModel], parent: PathKey) -> list[str]:
    """The keys the model at `parent` (a path under `root`) accepts, for "unknown key" messages."""
    model: type[BaseModel] | None = root
    users_key = False
    for part in parent:
        if model is None:
            return []
        if isinstance(part, int) or users_key:
            # A list index, or the user's own key of a mapping of models (git credentials by name).
            users_key = False
            continue
        field_info = model.model_fields.get(part)
        if field_info is None:
            return []
        model = _model_in(field_info.annotation)
        users_key = _is_mapping(field_info.annotation)
    return list(model.model_fields) if model is not None else []


def _is_mapping(annotation: Any) -> bool:
    if get_origin(annotation) is dict:
        return True
    return any(_is_mapping(arg) for arg in get_args(annotation))


def _message(err: Any, root: type[BaseModel], path: PathKey, hints: Hints) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if kind == "extra_forbidden":
        moved = hints.moved.get((str(path[-2]), str(path[-1]))) if len(path) >= 2 else None
        if moved:
            return f"no longer accepted here: {moved}"
        key = str(path[-1]).lower() if path else ""
        credential = key in _CREDENTIAL_KEYS or any(w in key for w in _CREDENTIAL_WORDS)
        if credential and hints.credentials:
            return hints.credentials
        allowed = allowed_keys(root, path[:-1])
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_type":
        shown = _SHORT.repr(err.get("input"))
        return f"must be a string (quote it: YAML read {type(err.get('input')).__name__} {shown})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        found = err.get("input")
        return f"must be a mapping (YAML read {'null' if found is None else type(found).__name__})"
    if kind == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        if pattern in hints.patterns:
            return hints.patterns[pattern]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def issues_from_validation(
    exc: ValidationError,
    root: type[BaseModel],
    data: Any,
    located: LocatedYaml,
    *,
    place: Callable[[PathKey], PathKey] | None = None,
    hints: Hints = NO_HINTS,
    partial: bool = False,
) -> list[Issue]:
    """Pydantic errors of validating `data` as `root`, one issue per key path (alternatives joined).

    `place` maps a path in `data` to the path in the document (`located`) it came from, for data
    assembled from several places of one file (a fleet VM merged over `defaults`). With `partial`,
    missing keys are not problems (the data is completed elsewhere, as `defaults` by each VM)."""
    groups: dict[PathKey, list[str]] = {}
    for err in exc.errors():
        if partial and err.get("type") == "missing":
            continue
        path = _trim_loc(data, tuple(err["loc"]))
        message = _message(err, root, path, hints)
        messages = groups.setdefault(place(path) if place else path, [])
        if message not in messages:
            messages.append(message)
    return [
        Issue(located.file, located.line_of(where), dotted(where), "; ".join(messages))
        for where, messages in groups.items()
    ]


M = TypeVar("M", bound=BaseModel)


def validate_located(
    model: type[M], located: LocatedYaml, error: type[InputError], what: str, hints: Hints = NO_HINTS
) -> M:
    """Validate a parsed document as its root `model`; raise `error` when it is not a mapping (`what must
    be a YAML mapping`) or with every pydantic issue located by file, line and key path."""
    if not isinstance(located.data, dict):
        raise error([Issue(located.file, located.line_of(()), "", f"{what} must be a YAML mapping")])
    try:
        return model.model_validate(located.data)
    except ValidationError as exc:
        raise error(issues_from_validation(exc, model, located.data, located, hints=hints)) from None
