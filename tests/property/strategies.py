"""Generators of hostile documents: mutations of a valid document, alias bombs, deep nesting, bad bytes."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

Path = tuple[str | int, ...]

# Any JSON/YAML value, including the wrong types for every field.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1000, max_size=5000),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


def paths(doc: Any, prefix: Path = ()) -> list[Path]:
    """Every key path of `doc` (dict keys and list indexes), parents before children."""
    out: list[Path] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out.append((*prefix, index))
            out += paths(value, (*prefix, index))
    return out


def _parent(doc: Any, path: Path) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Path]]]:
    """`base` with 1-4 mutations: delete a key, replace a value (any type), add an unknown key.

    Returns the document and the mutations applied as (kind, path); `unknown` paths must be reported.
    """
    doc = copy.deepcopy(base)
    done: list[tuple[str, Path]] = []
    for _ in range(draw(st.integers(1, 4))):
        candidates = paths(doc)
        kind = draw(st.sampled_from(["delete", "replace", "unknown"]))
        if kind == "unknown":
            dicts: list[Path] = [()] + [p for p in candidates if isinstance(_get(doc, p), dict)]
            where = draw(st.sampled_from(dicts))
            key = "zz_" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
            _get(doc, where)[key] = draw(values)
            done.append(("unknown", (*where, key)))
            continue
        if not candidates:
            continue
        path = draw(st.sampled_from(candidates))
        parent = _parent(doc, path)
        if kind == "delete":
            del parent[path[-1]]
            # A list index shifts the later ones: stop tracking paths below this list.
            done.append(("delete", path))
        else:
            parent[path[-1]] = draw(values)
            done.append(("replace", path))
    return doc, done


def _get(doc: Any, path: Path) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def alias_bomb(draw: st.DrawFn, key: str) -> str:
    """A billion-laughs document: `levels` anchors, each a list of `width` aliases of the previous one."""
    width = draw(st.integers(5, 12))
    levels = draw(st.integers(6, 12))
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


@st.composite
def deep_nesting(draw: st.DrawFn, key: str) -> str:
    """A value nested thousands of levels deep, in flow or block style."""
    depth = draw(st.integers(500, 20_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
    return f"{key}: " + opener * depth + "x" + closer * depth + "\n"


hostile_bytes = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(lambda t: t.encode("utf-16")),
    st.text(max_size=500).map(lambda t: b"\xff\xfe" + t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=50).map(lambda b: b"schema_version: 1\nos: {distro: " + b + b"}\n"),
)


# What a shell, systemd, YAML or shlex would interpret, mixed into arbitrary text.
HOSTILE_PIECES = st.sampled_from(
    [
        "'",
        '"',
        "\\",
        "$",
        "`",
        "$(id)",
        "${IFS}",
        "*",
        "?",
        "[a]",
        "~",
        "#",
        ";",
        "&",
        "|",
        "<",
        ">",
        " ",
        "\t",
        "-",
        "--help",
        "%",
        "=",
        "\\n",
        "\u2028",
        "\u0085",
        "\x7f",
        "\x1b[31m",
        "{{",
        "}}",
        ": ",
        "- ",
        "!!python/object",
        "&a",
        "*a",
        "@",
        ",",
        "\ufeff",
    ]
)
hostile_text = st.lists(st.one_of(HOSTILE_PIECES, st.text(max_size=8)), max_size=12).map("".join)
