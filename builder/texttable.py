"""Plain aligned text tables for the CLI's results (status, templates, rollout plans)."""

from __future__ import annotations

from collections.abc import Sequence


def aligned(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    rows = [tuple(header), *(tuple(r) for r in body)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
