"""`builder pin`: a loopback HTTP server serving a K3s release layout, PyPI's JSON API and the az extension
index stands in for the internet.

Layout served (what the real services publish):
- `<releases>/<tag with + as %2B>/sha256sum-amd64.txt`: `sha256sum` lines for the release artifacts
  (k3s-io/k3s scripts/validate-artifacts lists them: k3s, k3s-airgap-images-amd64.tar/.tar.gz/.tar.zst,
  k3s-arm64, k3s-armhf, k3s-images.txt); install.sh's download_hash reads it with
  `grep " k3s${SUFFIX}$"` and keeps what precedes the first blank;
- `<install>/<tag>/install.sh` (raw.githubusercontent.com/k3s-io/k3s/<tag>/install.sh);
- `<pypi>/azure-cli/<version>/json` (PyPI's JSON API: 404 for an unknown version);
- the extension index (azcliextensionsync .../index1/index.json): `{"extensions": {name: [{"metadata":
  {"name", "version"}, "filename", "sha256Digest", ...}]}, "formatVersion": "1"}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.checksums import looks_like_placeholder, placeholder_paths
from builder.cli import cli
from builder.rc import RC
from builder.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
TAG = "v1.31.4%2Bk3s1"
NEW_TAG = "v1.31.5%2Bk3s1"
# The examples' placeholders: each must be recognised.
EXAMPLE_SUMS = [
    "2b1a3e4a9a0b5bd8b6fe4a2d6f8a1e9d3c7b5a4e2f1d0c9b8a7e6d5c4b3a2f10",
    "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b",
    "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
]


def _artifact(name: str, tag: str) -> bytes:
    return hashlib.sha512(f"{tag}/{name}".encode()).digest() * 64


def _sums(tag: str) -> bytes:
    names = ["k3s", "k3s-airgap-images-amd64.tar", "k3s-airgap-images-amd64.tar.gz",
             "k3s-airgap-images-amd64.tar.zst", "k3s-images.txt"]  # fmt: skip
    return "".join(f"{hashlib.sha256(_artifact(n, tag)).hexdigest()}  {n}\n" for n in names).encode()


def _install(tag: str) -> bytes:
    return f"#!/bin/sh\n# k3s install script at {tag}\nset -e\n".encode()


def _index(**versions: list[str]) -> bytes:
    extensions = {
        name: [
            {"filename": f"{name.replace('-', '_')}-{v}-py2.py3-none-any.whl", "sha256Digest": "0" * 64,
             "metadata": {"name": name, "version": v}}
            for v in vs
        ]
        for name, vs in versions.items()
    }  # fmt: skip
    return json.dumps({"extensions": extensions, "formatVersion": "1"}).encode()


class Internet:
    """Raw request path -> body; every request path seen is recorded."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.seen: list[str] = []
        for tag in (TAG, NEW_TAG):
            self.routes[f"/k3s/releases/download/{tag}/sha256sum-amd64.txt"] = _sums(tag)
            self.routes[f"/raw/k3s/{tag}/install.sh"] = _install(tag)
        self.routes["/pypi/azure-cli/2.67.0/json"] = b'{"info": {"version": "2.67.0"}}'
        self.routes["/az/index.json"] = _index(
            connectedk8s=["1.10.4", "1.10.5"], **{"k8s-extension": ["1.6.3"], "k8s-configuration": ["2.2.0"]}
        )


@pytest.fixture
def internet() -> Iterator[tuple[Internet, dict[str, str]]]:
    net = Internet()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            net.seen.append(self.path)
            body = net.routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body if body is not None else b"not found")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    env = {
        "ARCBAKE_K3S_RELEASES_URL": f"{base}/k3s/releases/download",
        "ARCBAKE_K3S_INSTALL_URL": f"{base}/raw/k3s/",
        "ARCBAKE_PYPI_URL": f"{base}/pypi",
        "ARCBAKE_AZ_EXTENSION_INDEX_URL": f"{base}/az/index.json",
        "NO_PROXY": "127.0.0.1",
    }
    try:
        yield net, env
    finally:
        server.shutdown()
        server.server_close()


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "rocky9.yaml"
    shutil.copy(REPO / "examples" / "rocky9.yaml", path)
    path.chmod(0o640)
    return path


def _expected(tag: str) -> dict[str, str]:
    return {
        "binary": hashlib.sha256(_artifact("k3s", tag)).hexdigest(),
        "airgap_images": hashlib.sha256(_artifact("k3s-airgap-images-amd64.tar.zst", tag)).hexdigest(),
        "install_script": hashlib.sha256(_install(tag)).hexdigest(),
    }


def test_pin_writes_the_release_checksums_and_keeps_everything_else(
    internet: tuple[Internet, dict[str, str]], spec_file: Path
) -> None:
    net, env = internet
    before = spec_file.read_text().splitlines()
    assert placeholder_paths(load_spec(spec_file))
    code, out, err = run(env, "pin", str(spec_file))
    assert code == RC.OK, err
    after = spec_file.read_text().splitlines()
    expected = _expected(TAG)
    # Only the three digest lines changed; comments, order, flow lists and blank lines are as they were.
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert [a.strip() for _, a in changed] == [f"{k}: {v}" for k, v in expected.items()]
    spec = load_spec(spec_file)
    assert spec.k3s.sha256.model_dump() == expected
    assert not placeholder_paths(spec)
    assert spec_file.stat().st_mode & 0o777 == 0o640
    assert f"/k3s/releases/download/{TAG}/sha256sum-amd64.txt" in net.seen
    assert f"/raw/k3s/{TAG}/install.sh" in net.seen
    assert "azure.extensions.connectedk8s: 1.10.5 exists" in out
    # A second run finds nothing to change and leaves the file as it is.
    code, out, _ = run(env, "pin", str(spec_file), "--format", "json")
    assert code == RC.OK and json.loads(out)["changed"] == {}
    assert spec_file.read_text().splitlines() == after


def test_pin_another_release_changes_the_version_too(
    internet: tuple[Internet, dict[str, str]], spec_file: Path
) -> None:
    _, env = internet
    code, out, err = run(env, "pin", str(spec_file), "--k3s", "v1.31.5+k3s1", "--format", "json")
    assert code == RC.OK, err
    doc = json.loads(out)
    assert doc["changed"]["k3s.version"] == {"old": "v1.31.4+k3s1", "new": "v1.31.5+k3s1"}
    spec = load_spec(spec_file)
    assert spec.k3s.version == "v1.31.5+k3s1"
    assert spec.k3s.sha256.model_dump() == _expected(NEW_TAG)


@pytest.mark.parametrize(
    ("breakage", "args", "code", "message"),
    [
        ("no-release", ["--k3s", "v1.31.9+k3s1"], RC.FAILED, "HTTP 404"),
        ("no-airgap", [], RC.FAILED, "lists no k3s-airgap-images-amd64.tar.zst"),
        ("no-install", [], RC.FAILED, "install.sh: HTTP 404"),
        ("no-cli", [], RC.FAILED, "azure.cli_version: azure-cli 2.67.0 is not a release"),
        ("no-extension", [], RC.FAILED, "azure.extensions.k8s_configuration: k8s-configuration 2.2.0 is not"),
        ("bad-index", [], RC.FAILED, "is not an az extension index"),
        ("", ["--k3s", "latest"], RC.USAGE, "is not an exact K3s release"),
    ],
)
def test_nothing_is_written_when_a_fetch_or_check_fails(
    internet: tuple[Internet, dict[str, str]],
    spec_file: Path,
    breakage: str,
    args: list[str],
    code: int,
    message: str,
) -> None:
    net, env = internet
    sums = f"/k3s/releases/download/{TAG}/sha256sum-amd64.txt"
    if breakage == "no-airgap":
        net.routes[sums] = b"".join(
            line + b"\n" for line in _sums(TAG).splitlines() if not line.endswith(b".tar.zst")
        )
    elif breakage == "no-install":
        del net.routes[f"/raw/k3s/{TAG}/install.sh"]
    elif breakage == "no-cli":
        del net.routes["/pypi/azure-cli/2.67.0/json"]
    elif breakage == "no-extension":
        net.routes["/az/index.json"] = _index(
            connectedk8s=["1.10.5"], **{"k8s-extension": ["1.6.3"], "k8s-configuration": ["2.1.0"]}
        )
    elif breakage == "bad-index":
        net.routes["/az/index.json"] = b"<html>captive portal</html>"
    before = spec_file.read_bytes()
    got, out, err = run(env, "pin", str(spec_file), *args, "--format", "json")
    assert got == code
    assert message in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert json.loads(out)["exit_code"] == code
    assert spec_file.read_bytes() == before


def test_flow_style_and_quoted_values_are_replaced_in_place(
    internet: tuple[Internet, dict[str, str]], spec_file: Path
) -> None:
    _, env = internet
    text = spec_file.read_text().replace("version: v1.31.4+k3s1", "version: 'v1.31.4+k3s1'")
    start = text.index("  sha256:\n")
    end = text.index("  cluster_cidr:")
    flow = (
        f"  sha256: {{binary: '{EXAMPLE_SUMS[0]}', airgap_images: \"{EXAMPLE_SUMS[1]}\",\n"
        f"    install_script: {EXAMPLE_SUMS[2]}}}  # flow style\n"
    )
    spec_file.write_text(text[:start] + flow + text[end:])
    code, _, err = run(env, "pin", str(spec_file), "--k3s", "v1.31.5+k3s1")
    assert code == RC.OK, err
    new = _expected(NEW_TAG)
    result = spec_file.read_text()
    assert f"  sha256: {{binary: '{new['binary']}', airgap_images: \"{new['airgap_images']}\",\n" in result
    assert f"    install_script: {new['install_script']}}}  # flow style\n" in result
    assert "version: 'v1.31.5+k3s1'" in result


def test_pin_on_an_invalid_spec_exits_3(internet: tuple[Internet, dict[str, str]], tmp_path: Path) -> None:
    _, env = internet
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "examples" / "rocky9.yaml").read_text().replace("cpus: 4", "cpus: many"))
    code, _, err = run(env, "pin", str(bad))
    assert code == RC.INVALID_INPUT and "hardware.cpus" in err


def test_unreachable_server_is_one_line(spec_file: Path) -> None:
    env = {"ARCBAKE_K3S_RELEASES_URL": "http://127.0.0.1:9/k3s", "NO_PROXY": "127.0.0.1"}
    code, _, err = run(env, "pin", str(spec_file))
    assert code == RC.FAILED and "nothing written" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("digest", [*EXAMPLE_SUMS, "0" * 64, "ab" * 32, "0123456789abcdef" * 4])
def test_placeholder_shapes_are_recognised(digest: str) -> None:
    assert looks_like_placeholder(digest)


@settings(max_examples=2000, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_real_digests_are_not_placeholders(data: bytes) -> None:
    assert not looks_like_placeholder(hashlib.sha256(data).hexdigest())


def test_build_refuses_placeholders_before_vcenter_with_a_pointer_to_pin(spec_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSPHERE_")}
    code, out, err = run(env, "build", str(spec_file), "--format", "json")
    assert code == RC.INVALID_INPUT, err
    issues = json.loads(out)["issues"]
    assert [i["path"] for i in issues] == ["k3s.sha256.binary", "k3s.sha256.airgap_images",
                                           "k3s.sha256.install_script"]  # fmt: skip
    lines = spec_file.read_text().splitlines()
    for issue in issues:
        assert lines[issue["line"] - 1].strip().startswith(issue["path"].rsplit(".", 1)[1] + ":")
        assert f"builder pin {spec_file}" in issue["message"]


@pytest.mark.allow_subp("packer", "ksvalidator")
def test_validate_warns_about_placeholders(spec_file: Path) -> None:
    args = ["validate", str(spec_file), "--only", "kickstart", "--format", "json"]
    code, out, _ = run(dict(os.environ), *args)
    assert code == RC.OK
    warnings = json.loads(out)["warnings"]
    assert any(w.startswith("k3s.sha256.binary: looks like a placeholder") for w in warnings)
