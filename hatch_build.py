"""hatchling build hook: the git commit of the tree being built, as `firstboot/_build_commit.txt` in the
wheel, so `builder --version` / `firstboot --version` name it when installed from the wheel (no .git).

From a tree without git (an sdist) the file is left out and `--version` says `commit unknown`.
ARCBAKE_BUILD_COMMIT overrides what git says (CI building from an exported tree).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _git_head(root: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


class BuildCommitHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds firstboot/_build_commit.txt to the wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Write the commit to a temp file and map it into the wheel."""
        commit = os.environ.get("ARCBAKE_BUILD_COMMIT") or _git_head(self.root)
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            return
        self._tmp = tempfile.mkdtemp(prefix="arcbake-build-")
        path = Path(self._tmp) / "_build_commit.txt"
        path.write_text(commit + "\n", encoding="utf-8")
        build_data["force_include"][str(path)] = "firstboot/_build_commit.txt"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temp file."""
        tmp = getattr(self, "_tmp", None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
