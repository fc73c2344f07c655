"""builder.wheelhouse: platform tags (fast) and a real assembly against PyPI (slow, cached)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from builder import wheelhouse

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("lock_guest", REPO / "tools" / "lock_guest.py")
assert _spec is not None and _spec.loader is not None
lock_guest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_guest)

PIP = os.path.basename(sys.executable)
# Shared between runs (gitignored), so only the first run on a machine downloads.
CACHE = REPO / ".cache" / "wheelhouse-test"


@pytest.mark.parametrize(
    ("platform", "glibc", "must", "must_not"),
    [
        ("manylinux2014_x86_64", "2.28", ["manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
          "manylinux2014_x86_64", "manylinux1_x86_64"], ["manylinux_2_29_x86_64"]),
        ("manylinux2014_x86_64", "2.17", ["manylinux_2_17_x86_64"], ["manylinux_2_18_x86_64"]),
        ("manylinux_2_28_aarch64", "2.34", ["manylinux_2_34_aarch64", "manylinux2014_aarch64"],
         ["manylinux_2_35_aarch64", "manylinux_2_28_x86_64"]),
        ("linux_x86_64", "2.28", ["linux_x86_64"], ["manylinux_2_17_x86_64"]),
    ],
)  # fmt: skip
def test_manylinux_platforms(platform: str, glibc: str, must: list[str], must_not: list[str]) -> None:
    tags = wheelhouse.manylinux_platforms(platform, glibc)
    for tag in must:
        assert tag in tags
    for tag in must_not:
        assert tag not in tags
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"python_version": "311"}, "python_version must look like 3.11"),
        ({"lock": "/nonexistent/guest.lock"}, "no lock file"),
        ({"glibc": "new"}, "glibc must look like"),
        ({"platform": "manylinux2014_x86_64", "glibc": "2.12"}, "older than the baseline"),
    ],
)
def test_bad_arguments_are_refused_before_pip_runs(
    tmp_path: Path, kwargs: dict[str, str], message: str
) -> None:
    # No allow_subp: reaching pip would fail the test through disable_subp_usage.
    with pytest.raises(wheelhouse.WheelhouseError, match=message):
        args = {k: Path(v) if k == "lock" else v for k, v in kwargs.items()}
        wheelhouse.assemble(tmp_path / "wh", cache_dir=tmp_path / "cache", **args)  # type: ignore[arg-type]


def _dist_name(wheel: Path) -> str:
    return wheel.name.split("-", 1)[0].lower().replace("_", "-")


@pytest.mark.slow
@pytest.mark.allow_subp(PIP)
def test_assemble_for_the_guest_interpreter(tmp_path: Path) -> None:
    wheels = wheelhouse.assemble(tmp_path / "wh", cache_dir=CACHE)
    names = {_dist_name(w) for w in wheels}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {req.split(">")[0].split("=")[0].split("<")[0].strip().lower() for req in extras["firstboot"]}
    assert "arcbake" in names
    assert wanted <= names, f"missing wheels: {wanted - names}"
    for wheel in wheels:
        tags = wheel.name[: -len(".whl")].split("-")[-3:]
        python, abi, plat = tags
        assert plat == "any" or "manylinux" in plat, wheel.name
        assert python.startswith(("py3", "py2.py3", "cp311")), wheel.name
        assert abi in {"none", "abi3", "cp311"}, wheel.name
    # The compiled dependency of pydantic is there for the guest, not for another interpreter.
    core = [w for w in wheels if _dist_name(w) == "pydantic-core"]
    assert core and "cp311-cp311-manylinux" in core[0].name
    # The arcbake wheel carries firstboot and declares the extra the guest installs.
    project = next(w for w in wheels if _dist_name(w) == "arcbake")
    with zipfile.ZipFile(project) as zf:
        assert "firstboot/subp.py" in zf.namelist()
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        assert "Provides-Extra: firstboot" in zf.read(meta).decode()
    # Exactly the lock's pins, and a requirements.txt the guest installs with --require-hashes.
    pins = lock_guest.locked(wheelhouse.GUEST_LOCK.read_text())
    got = {_dist_name(w): w.name.split("-")[1] for w in wheels if _dist_name(w) != "arcbake"}
    assert got == pins
    requirements = (tmp_path / "wh" / "requirements.txt").read_text()
    digest = hashlib.sha256(project.read_bytes()).hexdigest()
    assert requirements.startswith(wheelhouse.GUEST_LOCK.read_text())
    assert f"arcbake=={project.name.split('-')[1]} \\\n    --hash=sha256:{digest}\n" in requirements
    # Everything downloaded is in the wheel cache, so the next build resolves offline.
    cached = {p.name for p in (CACHE / "wheels").glob("*.whl")}
    assert {w.name for w in wheels if _dist_name(w) != "arcbake"} <= cached


@pytest.mark.slow
@pytest.mark.allow_subp(PIP)
def test_reassembly_replaces_stale_wheels_and_resolves_from_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wheelhouse.assemble(tmp_path / "first", cache_dir=CACHE)
    dest = tmp_path / "wh"
    dest.mkdir()
    (dest / "stale-0.1-py3-none-any.whl").write_bytes(b"not a wheel")
    caplog.set_level("INFO", logger="builder.wheelhouse")
    again = wheelhouse.assemble(dest, cache_dir=CACHE)
    assert not (dest / "stale-0.1-py3-none-any.whl").exists()
    assert {w.name for w in again} == {p.name for p in (tmp_path / "first").glob("*.whl")}
    # The second assembly was satisfied by the wheel cache with pip's index switched off (the
    # offline resolution is the proof the wheelhouse is complete; the guest installs it the same way).
    assert "wheel cache incomplete" not in caplog.text


def test_the_lock_satisfies_pyproject_and_pins_every_package_with_a_hash() -> None:
    text = wheelhouse.GUEST_LOCK.read_text()
    assert lock_guest.problems(text) == []
    entries = re.findall(r"^(\S+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    assert len(entries) == len(lock_guest.locked(text)) >= len(lock_guest.guest_requirements())


@pytest.mark.parametrize(
    ("lock", "problem"),
    [
        ("pydantic==2.9.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", "kubernetes is not in the lock"),
        ("pydantic==1.10.0 \\\n", "pydantic==1.10.0 does not satisfy pydantic<3,>=2.6"),
    ],
)
def test_a_lock_behind_pyproject_is_reported(lock: str, problem: str) -> None:
    assert problem in lock_guest.problems(lock)
