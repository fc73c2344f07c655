"""Text a guest supplied, made safe for the operator's terminal and for JSON: the one function `clean()`.

A clone's `guestinfo.arcbake.status` is written by whatever runs as root inside the clone, so its
strings are untrusted. Terminal control sequences in them would move the cursor, rewrite earlier lines,
set the window title (OSC 0/2), or write to the clipboard (OSC 52); bidirectional overrides make text
read differently from what it is; a CR makes a line overwrite itself. `clean()` removes whole escape
sequences (not just their ESC, which would leave `]0;title` behind), turns line breaks and tabs into
spaces, drops every other control and bidi/zero-width format character, and caps the length.
"""

from __future__ import annotations

import re

# Longest guest-supplied field that builder prints (a status message with its remedy stays one line).
MAX_CHARS = 300
ELLIPSIS = "..."

_ESCAPE_SEQUENCES = re.compile(
    r"""
      (?:\x1b\]|\x9d) [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)?            # OSC ... BEL or ST (or unterminated)
    | (?:\x1b[P^_X]|[\x90\x98\x9e\x9f]) [^\x1b\x9c]* (?:\x1b\\|\x9c)?   # DCS, SOS, PM, APC strings
    | (?:\x1b\[|\x9b) [0-?]* [ -/]* [@-~]?                              # CSI ... final byte
    | \x1b [ -/]* [0-~]?                                                # other ESC sequences
    """,
    re.VERBOSE,
)
_LINE_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]+")
# C0, DEL and C1 controls; zero-width and bidirectional format characters; the byte-order mark.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def clean(text: str, limit: int = MAX_CHARS) -> str:
    """`text` without escape sequences or control characters, on one line, at most `limit` characters."""
    text = _ESCAPE_SEQUENCES.sub("", text)
    text = _LINE_BREAKS.sub(" ", text)
    text = _CONTROLS.sub("", text)
    if len(text) > limit:
        text = text[: limit - len(ELLIPSIS)] + ELLIPSIS
    return text
