"""ARCHITECTURE.md: "a step never imports another step" (shared code lives in a module named for its job).

Every `firstboot/steps/*.py` module is parsed (not imported) and each import, at any depth (function-level
imports included), is resolved; one that names `firstboot.steps` or a module in it fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import firstboot.steps

STEPS_DIR = Path(firstboot.steps.__file__).parent
STEP_FILES = sorted(p for p in STEPS_DIR.glob("*.py") if p.name != "__init__.py")


def step_imports(source: str) -> list[str]:
    """The modules (and `package.name` pairs of `from X import name`) that `source` imports from a step."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative to firstboot/steps/: level 1 is the steps package itself, 2 is firstboot.
                package = ["firstboot", "steps"]
                parts = package[: max(len(package) - (node.level - 1), 0)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_step(module: str) -> bool:
    return module == "firstboot.steps" or module.startswith("firstboot.steps.")


def test_step_files_found() -> None:
    names = {p.stem for p in STEP_FILES}
    assert {"arc", "flux", "k3s", "metadata"} <= names


@pytest.mark.parametrize("path", STEP_FILES, ids=lambda p: p.stem)
def test_step_imports_no_other_step(path: Path) -> None:
    offending = [m for m in step_imports(path.read_text(encoding="utf-8")) if is_step(m)]
    assert not offending, f"{path.name} imports {offending}: move the shared code to a module named for it"


@pytest.mark.parametrize(
    "source",
    [
        "from firstboot.steps.arc import wait_pods\n",
        "import firstboot.steps.arc\n",
        "from firstboot.steps import arc\n",
        "from firstboot import steps\n",
        "from . import arc\n",
        "from .arc import wait_pods\n",
        "def run():\n    from firstboot.steps.k3s import META\n",
    ],
)
def test_detector_catches(source: str) -> None:
    assert any(is_step(m) for m in step_imports(source))


def test_detector_allows_shared_modules() -> None:
    source = "from firstboot import kube, arm\nfrom firstboot.step import Context\nfrom .. import azcli\n"
    assert not any(is_step(m) for m in step_imports(source))
