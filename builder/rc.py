"""builder's exit codes, in one place (like ansible-lint's constants.RC)."""

from enum import IntEnum


class RC(IntEnum):
    """Process exit codes of the `builder` CLI (ARCHITECTURE.md, CLI contracts)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INVALID_INPUT = 3
    ARTIFACT_REJECTED = 4
    INTERRUPTED = 130
