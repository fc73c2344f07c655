"""builder on hostile ground: render -o where nothing can be written, an unusable TMPDIR, credentials
inside VSPHERE_SERVER, umask 000. Each is one `error:` line with the documented exit code (no traceback),
nothing half-written, no credential echoed; or, for the umask, modes that do not depend on it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from builder.rc import RC
from builder.vsphere.connection import Credentials, VSphereError

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "examples" / "rocky9.yaml"
DEMO = REPO / "examples" / "demo-image.yaml"
PASSWORD = "S3cr3t-pw-7731"


def builder(
    *args: str, env: dict[str, str] | None = None, umask: int = -1
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "builder"), *args],
        capture_output=True, text=True, timeout=300, check=False, env=env, umask=umask,
    )  # fmt: skip


def _one_error_line(proc: subprocess.CompletedProcess[str], fragment: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert fragment in errors[0], errors[0]
    return errors[0]


# (-o DIR below tmp_path or absolute, what the one line says)
RENDER_OUT_TABLE = [
    pytest.param(
        "/proc/arcbake-render/build",
        "No such file or directory",
        id="under-proc",
        marks=pytest.mark.fault(
            "builder render -o on an invalid path", "one line naming the build dir, exit 1, no traceback"
        ),
    ),
    pytest.param("/dev/null/build", "not a directory", id="under-a-file"),
    pytest.param("/sys/arcbake-render", "Operation not permitted", id="sysfs"),
    pytest.param("{tmp}/" + "x" * 300, "File name too long", id="name-too-long"),
]


@pytest.mark.parametrize(("out", "fragment"), RENDER_OUT_TABLE)
def test_render_to_an_unwritable_path_is_one_line(tmp_path: Path, out: str, fragment: str) -> None:
    proc = builder("render", str(SPEC), "-o", out.format(tmp=tmp_path))
    assert proc.returncode == RC.FAILED
    line = _one_error_line(proc, fragment)
    assert "cannot write the build dir" in line
    assert list(tmp_path.iterdir()) == []  # no stage dir left behind


@pytest.mark.fault("builder render -o on a read-only file system", "one line (Read-only file system), exit 1")
def test_render_to_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    # A private mount namespace (the suite runs as root, like CI): the read-only tmpfs exists for this
    # command only; as root, a 0555 directory would still be writable.
    render = f'exec "{BIN / "builder"}" render "{SPEC}" -o "{ro}/build"'
    script = f'mount -t tmpfs -o ro,size=1m arcbake-ro "{ro}" && {render}'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == RC.FAILED, proc.stderr
    _one_error_line(proc, "Read-only file system")


def _file(tmp: Path) -> str:
    path = tmp / "a-file"
    path.write_text("x")
    return str(path)


# (TMPDIR, builder command)
TMPDIR_TABLE = [
    pytest.param(
        lambda t: "/proc/arcbake-tmp",
        ["render", str(SPEC), "-o", "{tmp}/b"],
        id="render-missing",
        marks=pytest.mark.fault("an unwritable TMPDIR", "one line naming TMPDIR, exit 1, before Packer runs"),
    ),
    pytest.param(_file, ["validate", str(SPEC)], id="validate-file"),
    pytest.param(lambda t: "/sys", ["build", str(DEMO), "-o", "{tmp}/b"], id="build-sysfs"),
]


@pytest.mark.parametrize(("tmpdir", "args"), TMPDIR_TABLE)
def test_unusable_tmpdir_is_one_line(tmp_path: Path, tmpdir: object, args: list[str]) -> None:
    assert callable(tmpdir)
    env = {**os.environ, "TMPDIR": tmpdir(tmp_path), "VSPHERE_SERVER": "127.0.0.1:9", "VSPHERE_USER": "u",
           "VSPHERE_PASSWORD": PASSWORD}  # fmt: skip
    proc = builder(*(a.format(tmp=tmp_path) for a in args), env=env)
    assert proc.returncode == RC.FAILED
    _one_error_line(proc, f"TMPDIR {env['TMPDIR']} is not a writable directory")
    assert not (tmp_path / "b").exists()


CREDENTIAL_SERVERS = [
    pytest.param(
        f"https://administrator:{PASSWORD}@vc.example.com",
        id="url-user-password",
        marks=pytest.mark.fault(
            "credentials inside VSPHERE_SERVER (https://user:pw@host)",
            "refused with a message that does not contain them, exit 1",
        ),
    ),
    pytest.param(f"administrator:{PASSWORD}@vc.example.com:443", id="user-password-port"),
    pytest.param(f"https://{PASSWORD}@vc.example.com/sdk", id="url-token"),
    pytest.param(f"vc.example.com:{PASSWORD}", id="password-as-port"),
    pytest.param(f"https://vc.example.com:{PASSWORD}@other/sdk", id="at-after-port"),
]


@pytest.mark.parametrize("server", CREDENTIAL_SERVERS)
def test_credentials_in_vsphere_server_are_never_echoed(server: str) -> None:
    env = {"VSPHERE_SERVER": server, "VSPHERE_USER": "u", "VSPHERE_PASSWORD": "p"}
    with pytest.raises(VSphereError) as info:
        Credentials.from_env(env)
    assert PASSWORD not in str(info.value) and "administrator" not in str(info.value)


def test_credentials_in_vsphere_server_through_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "VSPHERE_SERVER": str(CREDENTIAL_SERVERS[0].values[0]), "VSPHERE_USER": "u",
           "VSPHERE_PASSWORD": "p"}  # fmt: skip
    proc = builder("build", str(DEMO), "-o", str(tmp_path / "b"), env=env)
    assert proc.returncode == RC.FAILED
    _one_error_line(proc, "VSPHERE_SERVER holds credentials")
    assert PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("server", "expected"),
    [("vc.example.com", ("vc.example.com", 443)), ("vc:8443", ("vc", 8443)), ("[::1]:8989", ("::1", 8989)),
     ("https://vc.example.com:8443/sdk", ("vc.example.com", 8443))],
)  # fmt: skip
def test_plain_vsphere_server_forms_still_parse(server: str, expected: tuple[str, int]) -> None:
    creds = Credentials.from_env({"VSPHERE_SERVER": server, "VSPHERE_USER": "u", "VSPHERE_PASSWORD": "p"})
    assert (creds.host, creds.port) == expected


@pytest.mark.fault(
    "umask 000 (common CI container executors) for builder render and validate",
    "build dir not world-writable; systemd-analyze accepts our own unit",
)
def test_build_dir_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "build"
    proc = builder("render", str(SPEC), "-o", str(out), umask=0)
    assert proc.returncode == RC.OK, proc.stderr
    for path in [tmp_path / "deep", *out.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o002, f"{path} is world-writable ({oct(mode)})"
    proc = builder("validate", "--build-dir", str(out), "--only", "systemd", umask=0)
    assert proc.returncode == RC.OK, proc.stdout + proc.stderr
    assert "world-writable" not in proc.stdout + proc.stderr
