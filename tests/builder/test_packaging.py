"""The built wheel, installed with pipx outside the source tree, renders a build dir with the guest
wheelhouse; the guest's install command installs that wheelhouse into a clean venv.

pip's HTTP cache and builder's wheel cache live under .cache/packaging-test (gitignored), so only the
first run on a machine downloads.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "packaging-test"
LOCK = REPO / "firstboot" / "guest-requirements.lock"


def _run(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH, no venv: nothing may come from the source tree or the dev venv."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env.update(HOME=str(tmp / "home"), XDG_CACHE_HOME=str(CACHE / "xdg"), PIP_CACHE_DIR=str(CACHE / "pip"))
    return env


def _record_ok(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        for path, digest, _size in csv.reader(io.StringIO(zf.read(record_name).decode())):
            if path == record_name:
                continue
            raw = base64.urlsafe_b64encode(hashlib.sha256(zf.read(path)).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={raw}", path


@pytest.mark.slow
def test_pipx_installed_builder_renders_the_wheelhouse_outside_the_source_tree(tmp_path: Path) -> None:
    assert shutil.which("pipx"), "pipx is installed by tools/dev.sh"
    dist = tmp_path / "dist"
    env = _clean_env(tmp_path)
    # The wheel as CI builds it (hatchling, its build hook writes the commit).
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(REPO)],
         {**env, "PATH": os.environ["PATH"]}, tmp_path)  # fmt: skip
    (wheel,) = dist.glob("arcbake-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        inside_wheel = set(zf.namelist())
    for inside in (
        "builder/py.typed",
        "firstboot/py.typed",
        "firstboot/guest-requirements.lock",
        "firstboot/_build_commit.txt",
        "builder/_data/templates/scripts/30-install-firstboot.sh.j2",
    ):
        assert inside in inside_wheel, inside

    # pipx's shared pip venv is kept between runs (it is pipx's own tooling, not what is tested).
    pipx_env = {**env, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin"),
                "PIPX_SHARED_LIBS": str(CACHE / "pipx-shared")}  # fmt: skip
    # builder's dependencies as wheels under .cache: a warm run installs them without the index.
    deps = CACHE / "builder-wheels"
    offline = [
        "pipx",
        "install",
        "--pip-args",
        f"--no-index --find-links {deps} --find-links {dist}",
        str(wheel),
    ]
    if subprocess.run(offline, env=pipx_env, cwd=tmp_path, capture_output=True, timeout=600).returncode != 0:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "-d", str(deps), str(wheel)],
             {**env, "PATH": os.environ["PATH"]}, tmp_path)  # fmt: skip
        _run([*offline[:2], "--force", *offline[2:]], pipx_env, tmp_path)
    builder = str(tmp_path / "bin" / "builder")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    version = _run([builder, "--version"], env, tmp_path).stdout
    assert re.fullmatch(rf"builder 0\.1\.0 \(commit {head.stdout.strip()}, Python [\d.]+\)\n", version), (
        version
    )

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "examples" / "rocky9.yaml", work / "rocky9.yaml")
    out = _run(
        [builder, "render", "rocky9.yaml", "--wheelhouse", "-o", "build", "--format", "json"], env, work
    )
    doc = json.loads(out.stdout)
    wh = work / "build" / "wheelhouse"
    assert (work / "build" / "scripts" / "30-install-firstboot.sh").is_file()
    names = sorted(p.name for p in wh.glob("*.whl"))
    assert names == sorted(doc["wheelhouse"])
    pins = dict(re.findall(r"^(\S+)==(\S+) \\$", LOCK.read_text(), re.M))
    got = {n.split("-")[0].lower().replace("_", "-"): n.split("-")[1] for n in names}
    assert got.pop("arcbake") == "0.1.0"
    assert got == {k.lower().replace("_", "-").replace(".", "-"): v for k, v in pins.items()}
    # The arcbake wheel was rebuilt from the pipx install (no source tree there): a valid wheel.
    (project,) = wh.glob("arcbake-*.whl")
    _record_ok(project)

    # The guest's own command, from the wheelhouse alone: hashes checked, nothing resolved, no index.
    guest = tmp_path / "guest"
    _run([sys.executable, "-m", "venv", "--without-pip", str(guest)], env, tmp_path)
    pip = [sys.executable, "-m", "pip", "--python", str(guest / "bin" / "python"), "install", "--quiet"]
    pip += ["--no-compile", "--no-index"]
    _run([*pip, "--find-links", str(wh), "--require-hashes", "--no-deps", "-r", str(wh / "requirements.txt")],
         env, tmp_path)  # fmt: skip
    firstboot = _run([str(guest / "bin" / "firstboot"), "--version"], env, tmp_path).stdout
    assert firstboot.startswith(f"firstboot 0.1.0 (commit {head.stdout.strip()}")
    imports = "import firstboot.kube, kubernetes, dns.resolver, ntplib, tenacity"
    _run([str(guest / "bin" / "python"), "-c", imports], env, tmp_path)
