"""YAML safety checks shared by firstboot's metadata parsing and builder's spec/fleet loading.

Only the standard library: firstboot is installed into the image without builder's dependencies.
"""

from __future__ import annotations

# Specs, fleets and onboarding configs are a few levels deep. PyYAML's scanner is quadratic in flow
# nesting depth (seconds at 1000 levels) and its composer recurses once per level (RecursionError, a
# traceback), so deeper nesting is refused before PyYAML sees the text.
MAX_DEPTH = 64


def flow_depth_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """True when `[`/`{` nest deeper than `limit` (quotes and comments skipped, approximately)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    quote = ""
    comment = False
    for char in text:
        if comment:
            comment = char != "\n"
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth = max(0, depth - 1)
    return False
