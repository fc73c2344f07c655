"""systemd's `EnvironmentFile=` reader, for tests that check what arcbake writes into `k3s.service.env`.

systemd cannot run here (no PID 1), so this double implements its parser state for state:
systemd/systemd `src/basic/env-file.c`, `parse_env_file_internal()` (read at commit 0002453b101d, whose
quoted-value states are those of v252, the systemd of EL 9 is v252 too): `#`/`;` comments, `KEY=` with
whitespace trimmed, unquoted values with backslash escapes and trailing whitespace chomped, single quotes
with no escapes, double quotes where a backslash escapes only `"` `\\` `` ` `` `$` (SHELL_NEED_ESCAPE) and
is kept before any other character, backslash-newline eaten. `load_env_file_push()` keeps the last value
of a repeated key. (The COMMENT_ESCAPE state of v254 only matters for comments ending in a backslash.)
"""

from __future__ import annotations

COMMENTS = "#;"
WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
SHELL_NEED_ESCAPE = '"\\`$'


def parse(text: str) -> dict[str, str]:
    """KEY -> value, as systemd would load `text` as an environment file."""
    out: dict[str, str] = {}
    state = "PRE_KEY"
    key: list[str] = []
    value: list[str] | None = None
    last_key_ws: int | None = None
    last_value_ws: int | None = None

    def push() -> None:
        nonlocal key, value
        name = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        out[name] = "".join(value or [])
        key, value = [], None

    for c in text:
        if state == "PRE_KEY":
            if c in COMMENTS:
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, last_key_ws, key = "KEY", None, [c]
        elif state == "KEY":
            if c in NEWLINE:
                state, key = "PRE_KEY", []
            elif c == "=":
                state, last_value_ws = "PRE_VALUE", None
            else:
                if c not in WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in NEWLINE:
                state = "PRE_KEY"
                push()
            elif c == "'":
                state = "SINGLE_QUOTE_VALUE"
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state = "VALUE"
                value = [*(value or []), c]
        elif state == "VALUE":
            if c in NEWLINE:
                state = "PRE_KEY"
                if value is not None and last_value_ws is not None:
                    del value[last_value_ws:]
                push()
            elif c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in WHITESPACE:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value or [])
                value = [*(value or []), c]
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in NEWLINE:
                value = [*(value or []), c]
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value = [*(value or []), c]
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value = [*(value or []), c]
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in SHELL_NEED_ESCAPE:
                value = [*(value or []), c]
            elif c != "\n":
                value = [*(value or []), "\\", c]
        elif state == "COMMENT" and c in NEWLINE:
            state = "PRE_KEY"
    if state in (
        "PRE_VALUE",
        "VALUE",
        "VALUE_ESCAPE",
        "SINGLE_QUOTE_VALUE",
        "DOUBLE_QUOTE_VALUE",
        "DOUBLE_QUOTE_VALUE_ESCAPE",
    ):
        if state == "VALUE" and value is not None and last_value_ws is not None:
            del value[last_value_ws:]
        push()
    return out
