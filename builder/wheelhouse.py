"""The wheelhouse: every wheel the guest needs to install arcbake's firstboot without PyPI.

`builder build` (and `builder render --wheelhouse`) assembles it on the workstation or in image CI, and
Packer uploads it to `/tmp/arcbake-wheelhouse`, where the install-firstboot provisioning script creates the
`/opt/arcbake` venv with `pip install --no-index --find-links WH --require-hashes --no-deps -r
WH/requirements.txt`: exactly the wheels listed there, each checked against its sha256.

1. The arcbake wheel: `pip wheel --no-deps` of the source tree when builder runs from a checkout; from an
   installed builder (pipx, a wheel), the wheel is rebuilt from the installed distribution's own files
   (its RECORD), so no source tree is needed. arcbake is pure Python: one `py3-none-any` wheel.
2. The guest's dependencies: exactly `firstboot/guest-requirements.lock` (the `firstboot` extra resolved
   for the guest and pinned with hashes by `tools/lock_guest.py`), downloaded with `pip download
   --only-binary=:all: --implementation cp --python-version X.Y --platform ... --no-deps --require-hashes`:
   wheels for the *guest's* interpreter and platform, not the workstation's. Compiled dependencies
   (pydantic-core, PyYAML) must be manylinux wheels the guest's glibc can load, so the platform list is
   every `manylinux_2_N` from the wheel's base tag up to the guest's glibc (EL8 ships 2.28, EL9 2.34),
   plus the legacy aliases pip does not derive itself.
3. `requirements.txt`: the lock plus the arcbake wheel's own pin and hash, what the guest installs.

Repeated builds are fast: downloaded wheels are kept in a wheel cache (default
`$XDG_CACHE_HOME/arcbake/wheelhouse/<python>-<platform>`), and the next assembly first resolves offline
against that cache (`--no-index --find-links`), going to the index only when the cache cannot satisfy the
requirements (a new dependency, a first run). pip's own HTTP cache sits beside it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import firstboot
from firstboot import subp
from firstboot.fsutil import atomic_write, make_dirs

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
# The guest's pinned dependencies; inside the firstboot package so an installed builder carries it.
GUEST_LOCK = Path(firstboot.__file__).resolve().parent / "guest-requirements.lock"
REQUIREMENTS = "requirements.txt"


class WheelhouseError(Exception):
    """The wheelhouse could not be assembled; the message says which step and why."""


def project_root() -> Path | None:
    """The source tree this builder runs from, or None when it runs from an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "firstboot").is_dir() else None


# Files of an installed distribution that are the installer's, not the wheel's.
_INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def wheel_from_installed(dest: Path) -> Path:
    """Rebuild the arcbake wheel from the installed distribution's files (its RECORD lists them).

    A wheel installs its files unchanged, so zipping them back with the dist-info (a fresh RECORD with
    each file's sha256) gives the wheel that was installed: what pipx users have instead of a checkout.
    """
    try:
        dist = importlib_metadata.distribution("arcbake")
    except importlib_metadata.PackageNotFoundError:
        raise WheelhouseError("arcbake is neither a source checkout nor an installed distribution") from None
    files = [f for f in dist.files or [] if "__pycache__" not in f.parts and f.suffix != ".pyc"]
    info_dir = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    packaged = [f for f in files if f.parts[0] in ("builder", "firstboot")]
    if info_dir is None or not packaged:
        raise WheelhouseError(f"the installed arcbake {dist.version} lists no package files to rebuild from")
    # Only the wheel's own files: RECORD also lists the console scripts pip wrote outside site-packages.
    members = packaged + [f for f in files if f.parts[0] == info_dir and f.name not in _INSTALLER_FILES]
    wheel = dest / f"arcbake-{dist.version}-py3-none-any.whl"
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in sorted(members, key=str):
            data = Path(str(dist.locate_file(member))).read_bytes()
            zf.writestr(member.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([member.as_posix(), f"sha256={digest}", len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        zf.writestr(f"{info_dir}/RECORD", record.getvalue())
    wheel.chmod(0o644)
    LOG.info("rebuilt %s from the installed distribution (%d files)", wheel.name, len(members))
    return wheel


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


def pip(args: Sequence[str], *, timeout: float, description: str) -> subp.Result:
    """`python -m pip ARGS` through subp, with the user's PIP_* settings left out; WheelhouseError."""
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
    """The arcbake wheel in `dest`: `pip wheel --no-deps` of the source tree, or rebuilt from the installed
    distribution when there is none; returns the wheel's path."""
    root = project or project_root()
    if root is None:
        return wheel_from_installed(dest)
    before = set(dest.glob("arcbake-*.whl"))
    pip(
        ["wheel", "--no-deps", "--quiet", "--cache-dir", str(cache_dir / "pip"), "--wheel-dir", str(dest),
         str(root)],
        timeout=BUILD_TIMEOUT,
        description="building the arcbake wheel",
    )  # fmt: skip
    built = sorted(set(dest.glob("arcbake-*.whl")) - before) or sorted(dest.glob("arcbake-*.whl"))
    if not built:
        raise WheelhouseError(f"pip wheel wrote no arcbake wheel into {dest}")
    return built[-1]


def download_args(dest: Path, *, python_version: str, platforms: Sequence[str], cache_dir: Path) -> list[str]:
    """`pip download` for the guest's interpreter and platform into `dest` (requirements not included)."""
    args = ["download", "--quiet", "--only-binary=:all:", "--implementation", "cp"]
    args += ["--python-version", python_version, "--dest", str(dest), "--cache-dir", str(cache_dir / "pip")]
    for tag in platforms:
        args += ["--platform", tag]
    return args


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assemble(
    dest: Path,
    *,
    python_version: str = DEFAULT_PYTHON,
    platform: str = DEFAULT_PLATFORM,
    glibc: str = DEFAULT_GLIBC,
    cache_dir: Path | None = None,
    project: Path | None = None,
    offline_first: bool = True,
    lock: Path = GUEST_LOCK,
) -> list[Path]:
    """Fill `dest` with the arcbake wheel, the locked dependencies' wheels and `requirements.txt`.

    The wheels are for CPython `python_version` on `platform` (a manylinux tag) up to `glibc`. Wheels
    left in `dest` by an earlier run are removed first, so the wheelhouse never mixes two builds.
    Returns the sorted list of wheel paths. Raises WheelhouseError when a step fails (e.g. a locked
    wheel's hash differs, or a dependency has no wheel for the guest: pip's message names it).
    """
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise WheelhouseError(f"python_version must look like 3.11, not {python_version!r}")
    platforms = manylinux_platforms(platform, glibc)
    if not lock.is_file():
        raise WheelhouseError(f"no lock file {lock} (python tools/lock_guest.py writes it)")
    cache = cache_dir or default_cache_dir(python_version, platform)
    wheel_cache = cache / "wheels"
    wheel_cache.mkdir(parents=True, exist_ok=True)
    make_dirs(dest)  # 0755 whatever the umask: the wheelhouse is part of the build dir
    for stale in [*dest.glob("*.whl"), dest / REQUIREMENTS]:
        stale.unlink(missing_ok=True)

    project_wheel = build_project_wheel(dest, cache_dir=cache, project=project)
    download = download_args(dest, python_version=python_version, platforms=platforms, cache_dir=cache)
    locked = ["--no-deps", "--require-hashes", "-r", str(lock)]
    done = False
    if offline_first and any(wheel_cache.glob("*.whl")):
        try:
            pip(
                [*download, "--no-index", "--find-links", str(wheel_cache), *locked],
                timeout=DOWNLOAD_TIMEOUT,
                description="resolving the locked guest dependencies from the wheel cache",
            )
            done = True
        except WheelhouseError as exc:
            # A new or bumped dependency the cache does not hold yet: go to the index.
            LOG.info("wheel cache incomplete, downloading from the index: %s", str(exc).splitlines()[0])
    if not done:
        what = "downloading the locked guest dependencies"
        pip([*download, *locked], timeout=DOWNLOAD_TIMEOUT, description=what)
    for wheel in dest.glob("*.whl"):
        if wheel != project_wheel and not (wheel_cache / wheel.name).exists():
            shutil.copy2(wheel, wheel_cache / wheel.name)
    version = project_wheel.name.split("-")[1]
    own = f"arcbake=={version} \\\n    --hash=sha256:{_sha256(project_wheel)}\n"
    atomic_write(dest / REQUIREMENTS, lock.read_text(encoding="utf-8") + own, mode=0o644)
    wheels = sorted(dest.glob("*.whl"))
    LOG.info("wheelhouse %s: %d wheels for CPython %s on %s", dest, len(wheels), python_version, platform)
    return wheels
