"""The wheelhouse: every wheel the guest needs to install arcbake's firstboot without PyPI.

`builder build` assembles it on the workstation (or image CI) and Packer uploads it to
`/tmp/arcbake-wheelhouse`, where the install-firstboot provisioning script creates the `/opt/arcbake` venv
with `pip install --no-index --find-links /tmp/arcbake-wheelhouse 'arcbake[firstboot]'`.

Two pip runs, both through `firstboot.subp` with a timeout:

1. `pip wheel --no-deps` of the project itself (hatchling; arcbake is pure Python, so one `py3-none-any`
   wheel fits every guest);
2. `pip download --only-binary=:all: --implementation cp --python-version X.Y --platform ...` of the
   built wheel with its `[firstboot]` extra: the dependencies as wheels for the *guest's* interpreter and
   platform, not the workstation's. Compiled dependencies (pydantic-core, PyYAML) must be manylinux wheels
   the guest's glibc can load, so the platform list is every `manylinux_2_N` from the wheel's base tag up
   to the guest's glibc (EL8 ships 2.28, EL9 2.34), plus the legacy aliases pip does not derive itself.

Repeated builds are fast: downloaded wheels are kept in a wheel cache (default
`$XDG_CACHE_HOME/arcbake/wheelhouse/<python>-<platform>`), and the next assembly first resolves offline
against that cache (`--no-index --find-links`), going to the index only when the cache cannot satisfy the
requirements (a new dependency, a first run). pip's own HTTP cache sits beside it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from firstboot import subp
from firstboot.fsutil import make_dirs

LOG = logging.getLogger(__name__)

# pip resolving and downloading a dozen wheels; generous because image CI may sit behind a slow proxy.
DOWNLOAD_TIMEOUT = 600.0
# Building the pure-Python project wheel (hatchling, isolated build env).
BUILD_TIMEOUT = 300.0
# What the guest runs: EL9's python3.11; EL8's glibc 2.28 is the oldest the wheels must load on.
DEFAULT_PYTHON = "3.11"
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_GLIBC = "2.28"

# PEP 600 aliases: the legacy manylinux names and the glibc they stand for.
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_PEP600 = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")


class WheelhouseError(Exception):
    """The wheelhouse could not be assembled; the message says which step and why."""


def project_root() -> Path:
    """The source tree this builder runs from (the wheel is built from it)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise WheelhouseError(
            f"no pyproject.toml in {root}: building the arcbake wheel needs the source tree "
            "(install builder with `pip install -e .` from a checkout)"
        )
    return root


def manylinux_platforms(platform: str, glibc: str = DEFAULT_GLIBC) -> list[str]:
    """Every platform tag pip must be given for a guest with `glibc` whose baseline is `platform`.

    pip's `--platform` takes exact tags and does not map `manylinux2014_x86_64` to its PEP 600 name
    `manylinux_2_17_x86_64` (nor to the newer `manylinux_2_N` that many projects publish only), so the
    list is spelled out: legacy aliases at or above the baseline's age, and `manylinux_2_5 ..
    manylinux_2_<glibc>`. A non-manylinux platform (e.g. `linux_x86_64`) is passed through as it is.
    """
    prefix, _, arch = platform.partition("_")
    if prefix in _LEGACY:
        base = _LEGACY[prefix]
    elif match := _PEP600.match(platform):
        base = (int(match[1]), int(match[2]))
        arch = match[3]
    else:
        return [platform]
    try:
        major, minor = (int(p) for p in glibc.split(".", 1))
    except ValueError:
        raise WheelhouseError(f"glibc must look like 2.28, not {glibc!r}") from None
    if (major, minor) < base:
        raise WheelhouseError(f"glibc {glibc} is older than the baseline of {platform}")
    tags = [f"{legacy}_{arch}" for legacy, ver in _LEGACY.items() if ver <= (major, minor)]
    # The newest tags first: pip keeps the order as preference when several wheels fit.
    tags += [f"manylinux_2_{n}_{arch}" for n in range(minor, 4, -1)]
    return tags


def default_cache_dir(python_version: str, platform: str) -> Path:
    """Where downloaded wheels are kept between builds."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "arcbake" / "wheelhouse" / f"cp{python_version.replace('.', '')}-{platform}"


def _pip(args: Sequence[str], *, timeout: float, description: str) -> subp.Result:
    # PIP_* settings of the user (an index URL, --user) must not change what the guest gets, except
    # the proxy and CA settings image CI needs to reach the index at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    try:
        return subp.run(
            [sys.executable, "-m", "pip", *args], timeout=timeout, description=description, env=env
        )
    except subp.ProcessExecutionError as exc:
        raise WheelhouseError(f"{exc}\n{exc.stderr.strip()[-2000:]}".rstrip()) from None


def build_project_wheel(dest: Path, *, cache_dir: Path, project: Path | None = None) -> Path:
    """`pip wheel --no-deps` of the project into `dest`; returns the wheel's path."""
    root = project or project_root()
    before = set(dest.glob("arcbake-*.whl"))
    _pip(
        ["wheel", "--no-deps", "--quiet", "--cache-dir", str(cache_dir / "pip"), "--wheel-dir", str(dest),
         str(root)],
        timeout=BUILD_TIMEOUT,
        description="building the arcbake wheel",
    )  # fmt: skip
    built = sorted(set(dest.glob("arcbake-*.whl")) - before) or sorted(dest.glob("arcbake-*.whl"))
    if not built:
        raise WheelhouseError(f"pip wheel wrote no arcbake wheel into {dest}")
    return built[-1]


def _download_args(
    requirement: str, dest: Path, *, python_version: str, platforms: Sequence[str], cache_dir: Path
) -> list[str]:
    args = ["download", "--quiet", "--only-binary=:all:", "--implementation", "cp"]
    args += ["--python-version", python_version, "--dest", str(dest), "--cache-dir", str(cache_dir / "pip")]
    for tag in platforms:
        args += ["--platform", tag]
    return [*args, requirement]


def assemble(
    dest: Path,
    *,
    python_version: str = DEFAULT_PYTHON,
    platform: str = DEFAULT_PLATFORM,
    glibc: str = DEFAULT_GLIBC,
    extras: str = "firstboot",
    cache_dir: Path | None = None,
    project: Path | None = None,
    offline_first: bool = True,
) -> list[Path]:
    """Fill `dest` with the arcbake wheel and binary wheels of its `[extras]` dependencies.

    The wheels are for CPython `python_version` on `platform` (a manylinux tag) up to `glibc`. Wheels
    left in `dest` by an earlier run are removed first, so the wheelhouse never mixes two builds.
    Returns the sorted list of wheel paths. Raises WheelhouseError when a step fails (e.g. a dependency
    has no wheel for the guest: pip's message names it).
    """
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise WheelhouseError(f"python_version must look like 3.11, not {python_version!r}")
    if not re.fullmatch(r"[a-z0-9_]+(,[a-z0-9_]+)*", extras):
        raise WheelhouseError(f"extras must be a comma-separated list of names, not {extras!r}")
    platforms = manylinux_platforms(platform, glibc)
    cache = cache_dir or default_cache_dir(python_version, platform)
    wheel_cache = cache / "wheels"
    wheel_cache.mkdir(parents=True, exist_ok=True)
    make_dirs(dest)  # 0755 whatever the umask: the wheelhouse is part of the build dir
    for stale in dest.glob("*.whl"):
        stale.unlink()

    project_wheel = build_project_wheel(dest, cache_dir=cache, project=project)
    requirement = f"{project_wheel}[{extras}]"
    download = _download_args(
        requirement, dest, python_version=python_version, platforms=platforms, cache_dir=cache
    )
    done = False
    if offline_first and any(wheel_cache.glob("*.whl")):
        try:
            _pip(
                [*download[:1], "--no-index", "--find-links", str(wheel_cache), *download[1:]],
                timeout=DOWNLOAD_TIMEOUT,
                description="resolving the firstboot dependencies from the wheel cache",
            )
            done = True
        except WheelhouseError as exc:
            # A new or bumped dependency the cache does not hold yet: go to the index.
            LOG.info("wheel cache incomplete, downloading from the index: %s", str(exc).splitlines()[0])
    if not done:
        _pip(download, timeout=DOWNLOAD_TIMEOUT, description="downloading the firstboot dependencies")
    for wheel in dest.glob("*.whl"):
        if wheel != project_wheel and not (wheel_cache / wheel.name).exists():
            shutil.copy2(wheel, wheel_cache / wheel.name)
    wheels = sorted(dest.glob("*.whl"))
    LOG.info("wheelhouse %s: %d wheels for CPython %s on %s", dest, len(wheels), python_version, platform)
    return wheels
