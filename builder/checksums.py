"""Placeholder-looking sha256 values: what `build` refuses (and `validate` warns about) before a K3s
download would fail on them deep inside a guest.

The examples and `builder init` carry sha256 values "of the right shape" that are not any file's digest:
counting sequences (`9c8b7a6f5e4d...`), a repeated half, few distinct characters. A real digest is 64
uniformly random hex characters, so each of these patterns has a chance below 1e-8 of appearing in one
(a run of 12 counting steps, each ~1/7 likely: 2 * 64 * (1/7)**12). `builder pin SPEC` replaces
them with the release's values.
"""

from __future__ import annotations

from pathlib import Path

from builder.spec import ImageSpec, SpecError
from firstboot.located_yaml import Issue, dotted, read_located

# Counting run length that marks a placeholder (random hex: ~1e-9 per digest).
_RUN = 12
# A real digest uses nearly every hex digit; fewer than this many distinct ones is typed by hand.
_MIN_DISTINCT = 8
# The K3s artifacts whose digests the build verifies, as the spec's key paths.
CHECKSUM_KEYS = ("binary", "airgap_images", "install_script")


def looks_like_placeholder(digest: str) -> bool:
    """True when `digest` (64 hex characters) has a shape no real sha256 has in practice."""
    value = digest.lower()
    if len(set(value)) < _MIN_DISTINCT:
        return True
    for period in range(1, len(value) // 2 + 1):
        if all(value[i] == value[i + period] for i in range(len(value) - period)):
            return True
    for stride in (1, 2):
        run = 0
        for i in range(stride, len(value)):
            run = run + 1 if _counting(value[i - stride], value[i]) else 0
            if run >= _RUN:
                return True
    return False


def _counting(a: str, b: str) -> bool:
    """`b` follows or precedes `a` when counting in hex, in decimal digits or in the letters a-f (the
    ways a hand-typed placeholder counts, also interleaved: `9c8b7a6f...`)."""
    if (int(b, 16) - int(a, 16)) % 16 in (1, 15):
        return True
    if a.isdigit() and b.isdigit():
        return (int(b) - int(a)) % 10 in (1, 9)
    if a.isalpha() and b.isalpha():
        return (ord(b) - ord(a)) % 6 in (1, 5)
    return False


def placeholder_paths(spec: ImageSpec) -> list[tuple[str, ...]]:
    """Key paths (`("k3s", "sha256", "binary")`, ...) of the spec's placeholder-looking K3s checksums."""
    sums = spec.k3s.sha256
    return [("k3s", "sha256", key) for key in CHECKSUM_KEYS if looks_like_placeholder(getattr(sums, key))]


def placeholder_message(spec_file: str) -> str:
    """What to do about placeholder checksums (one sentence naming the command)."""
    return f"looks like a placeholder, not a release's sha256: run `builder pin {spec_file}`"


def refuse_placeholders(spec: ImageSpec, path: Path) -> None:
    """SpecError (exit 3), one located issue per placeholder checksum, when the build downloads K3s.

    A `communicator: none` build (the simulator, the demo) provisions nothing and downloads nothing, so
    its checksums are never used and stay allowed there."""
    if spec.build.communicator == "none":
        return
    paths = placeholder_paths(spec)
    if not paths:
        return
    located = read_located(path, SpecError)
    message = placeholder_message(str(path))
    raise SpecError([Issue(str(path), located.line_of(p), dotted(p), message) for p in paths])
