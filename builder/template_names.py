"""Template names with placeholders: what an image spec's `vsphere.template_name` produces and what a
fleet's `template` selects. One matcher serves both (pruning to `publish.keep`, newest match at deploy)."""

from __future__ import annotations

import re

PLACEHOLDERS = ("date", "timestamp", "k3s", "os")
# What each placeholder matches; {date} and {timestamp} are captured to order the matches.
_MATCH = {
    "date": r"\d{8}",
    "timestamp": r"\d{12}",
    "k3s": r"[A-Za-z0-9-]+",
    "os": r"[a-z]+\d+",
}
_PART = re.compile(r"(\{[^{}]*\})")


def placeholders(pattern: str) -> list[str]:
    """The placeholder names of `pattern`, in order (`tpl-{os}-{date}` -> ["os", "date"])."""
    return [p[1:-1] for p in _PART.findall(pattern)]


def unknown_placeholders(pattern: str) -> list[str]:
    """Placeholder names that are not one of {date} {timestamp} {k3s} {os}, or stray braces."""
    unknown = sorted({p for p in placeholders(pattern) if p not in PLACEHOLDERS})
    stray = _PART.sub("", pattern)
    if "{" in stray or "}" in stray:
        unknown.append("unbalanced braces")
    return unknown


def check_placeholders(pattern: str) -> str:
    """`pattern` when its placeholders are all known; ValueError naming the others."""
    unknown = unknown_placeholders(pattern)
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; allowed: {{date}} {{timestamp}} {{k3s}} {{os}}")
    return pattern


def template_matcher(pattern: str, *, os: str | None = None) -> re.Pattern[str]:
    """A regex matching every name `pattern` stands for (an exact name matches itself only). `os` pins
    the {os} placeholder to one variant (a spec knows its own)."""
    out = []
    captured: set[str] = set()
    for part in _PART.split(pattern):
        name = part[1:-1] if _PART.fullmatch(part) else None
        if name is None:
            out.append(re.escape(part))
        elif name == "os" and os is not None:
            out.append(re.escape(os))
        elif name in ("date", "timestamp") and name not in captured:
            captured.add(name)
            out.append(f"(?P<{name}>{_MATCH[name]})")
        else:
            out.append(_MATCH[name])
    return re.compile("^" + "".join(out) + "$")


def newest_match(pattern: str, names: list[str]) -> str | None:
    """The newest name matching `pattern` (by its timestamp and date, then by name), or None."""
    matcher = template_matcher(pattern)
    found = []
    for name in names:
        m = matcher.match(name)
        if m:
            stamp = (m.groupdict().get("timestamp") or "") + (m.groupdict().get("date") or "")
            found.append((stamp, name))
    return max(found)[1] if found else None
