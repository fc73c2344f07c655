"""Write firstboot/guest-requirements.lock: every package the guest installs, pinned, with its hashes.

    python tools/lock_guest.py            # rewrite the lock (needs the package index)
    python tools/lock_guest.py --check    # exit 1 when the lock no longer satisfies pyproject.toml

The guest set is pyproject.toml's `firstboot` extra. pip resolves it *for the guest*, the way the
wheelhouse downloads it (`pip download --only-binary=:all: --implementation cp --python-version 3.11
--platform manylinux...`: builder.wheelhouse's own arguments), so compiled dependencies are the wheels the
guest's glibc loads, whatever machine runs this. Each pinned file's sha256 goes into the lock;
`builder.wheelhouse` downloads with `--require-hashes` against it and the guest installs with
`pip install --require-hashes --no-deps`, so two images built a week apart carry the same libraries.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder import wheelhouse  # noqa: E402

HEADER = """\
# The guest's dependencies (pyproject.toml's `firstboot` extra), resolved for CPython {python} on
# {platform} (glibc {glibc}), pinned with the sha256 of each wheel. Regenerate with:
#     python tools/lock_guest.py
# builder's wheelhouse downloads exactly these (--require-hashes); the guest installs them with --no-deps.
"""


def guest_requirements() -> list[Requirement]:
    """The `firstboot` extra of pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"]["firstboot"]]


def resolve(dest: Path) -> list[Path]:
    """Download the guest set's wheels for the guest platform into `dest`."""
    args = wheelhouse.download_args(
        dest,
        python_version=wheelhouse.DEFAULT_PYTHON,
        platforms=wheelhouse.manylinux_platforms(wheelhouse.DEFAULT_PLATFORM, wheelhouse.DEFAULT_GLIBC),
        cache_dir=dest / "cache",
    )
    wheelhouse.pip([*args, *(str(r) for r in guest_requirements())], timeout=wheelhouse.DOWNLOAD_TIMEOUT,
                   description="resolving the guest's dependencies")  # fmt: skip
    return sorted(dest.glob("*.whl"))


def lock_text(wheels: list[Path]) -> str:
    """The lock: `name==version --hash=sha256:...` per wheel, sorted by name."""
    lines = [HEADER.format(python=wheelhouse.DEFAULT_PYTHON, platform=wheelhouse.DEFAULT_PLATFORM,
                           glibc=wheelhouse.DEFAULT_GLIBC)]  # fmt: skip
    entries = []
    for wheel in wheels:
        name, version, _build, _tags = parse_wheel_filename(wheel.name)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        entries.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
    return "".join(lines + sorted(entries))


def locked(text: str) -> dict[str, str]:
    """Name -> pinned version of a lock's text."""
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}


def problems(text: str) -> list[str]:
    """What in pyproject's guest set the lock does not satisfy (missing name, version outside range)."""
    pins = locked(text)
    out = []
    for req in guest_requirements():
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            out.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name}=={version} does not satisfy {req}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check the lock against pyproject.toml")
    args = parser.parse_args(argv)
    if args.check:
        found = problems(wheelhouse.GUEST_LOCK.read_text())
        for line in found:
            print(f"{wheelhouse.GUEST_LOCK}: {line}", file=sys.stderr)
        return 1 if found else 0
    with tempfile.TemporaryDirectory(prefix="arcbake-lock-") as tmp:
        wheels = resolve(Path(tmp))
        wheelhouse.GUEST_LOCK.write_text(lock_text(wheels))
    print(f"{wheelhouse.GUEST_LOCK}: {len(wheels)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
