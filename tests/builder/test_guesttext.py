"""guesttext.clean(): guest-supplied status text reaches the terminal and JSON without control sequences."""

from __future__ import annotations

import pytest

from builder.guesttext import ELLIPSIS, MAX_CHARS, clean


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        ("waiting for NTP", "waiting for NTP"),
        ("clock off by 120s\r\nfix NTP", "clock off by 120s fix NTP"),
        ("ok\rFAILED", "ok FAILED"),
        ("tab\there", "tab here"),
        ("\x1b]0;pwned title\x07done", "done"),  # OSC 0 (window title), BEL-terminated
        ("\x1b]2;title\x1b\\done", "done"),  # OSC 2, ST-terminated
        ("\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07copied", "copied"),  # OSC 52: write the clipboard
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),  # OSC 8 hyperlink
        ("\x1b[2J\x1b[1;1Hcleared", "cleared"),  # CSI: clear screen, move cursor
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[?1049h alt screen", " alt screen"),
        ("\x9b31mC1 CSI\x9b0m", "C1 CSI"),  # 8-bit CSI
        ("\x9d0;title\x9cafter", "after"),  # 8-bit OSC ... ST
        ("\x1bPqsixel\x1b\\after", "after"),  # DCS string
        ("\x1bcreset", "reset"),  # RIS
        ("\x1b7saved\x1b8", "saved"),
        ("nul\x00bell\x07bs\x08del\x7f", "nulbellbsdel"),
        ("c1\x85next\x8dline", "c1 nextline"),
        ("bidi \u202eevil\u202c text", "bidi evil text"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("line\u2028sep", "line sep"),
        ("\x1b]0;unterminated title", ""),
        ("unicode ok: é ü ✓", "unicode ok: é ü ✓"),
    ],
)
def test_clean_strips_control_sequences(hostile: str, expected: str) -> None:
    assert clean(hostile) == expected


def test_clean_caps_length() -> None:
    long = "x" * (MAX_CHARS * 10)
    out = clean(long)
    assert len(out) == MAX_CHARS and out.endswith(ELLIPSIS)
    assert clean("abcdef", limit=5) == "ab" + ELLIPSIS
    assert clean("x" * MAX_CHARS) == "x" * MAX_CHARS


def test_clean_output_has_no_controls_for_any_byte() -> None:
    every = "".join(chr(c) for c in range(0x00, 0x250)) + "".join(chr(c) for c in range(0x2000, 0x2070))
    out = clean(every * 2, limit=10_000)
    assert not [c for c in out if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F], repr(out)
    assert not set(out) & {"\u202e", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069", "\u200b", "\u2028"}
