"""Where the Jinja2 templates and the static Packer HCL are, from a source tree or an installed wheel."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def _locate(name: str) -> Path:
    # A wheel carries them under builder/_data (pyproject force-include); a checkout or an editable
    # install has them at the top of the repo.
    for candidate in (_PACKAGE / "_data" / name, _REPO / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"arcbake {name}/ directory not found next to {_PACKAGE}")


def templates_dir() -> Path:
    """The Jinja2 template root (`templates/`)."""
    return _locate("templates")


def packer_dir() -> Path:
    """The static Packer HCL2 directory (`packer/`)."""
    return _locate("packer")
