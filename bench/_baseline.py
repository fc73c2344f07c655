"""The code of an earlier commit, extracted beside the tree, for a bench to run it side by side.

Shared by the benches' `--baseline REV` options: `git archive` of the named folders into a temporary
folder the caller owns (and removes).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def extract(rev: str, into: Path, folders: tuple[str, ...]) -> Path | None:
    """The `folders` of commit `rev` under `into`/baseline-REV; None (said on stdout) when git has not got
    it: a shallow clone (CI) may not, and the bench then runs on without the before column."""
    tree = into / f"baseline-{rev}"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, *folders],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["git archive failed"]
        print(f"--baseline {rev} is not available ({reason[0]}): the before column is left out")
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=60)
    return tree
