"""`builder pin SPEC [--k3s VERSION]`: the release's real checksums into the spec, its comments kept.

What is fetched, at the K3s release tag (the layout of k3s-io/k3s's releases, scripts/validate-artifacts):
- `RELEASES/<tag>/sha256sum-amd64.txt`, `sha256sum` lines (`HEX  NAME`) for `k3s` and
  `k3s-airgap-images-amd64.tar.zst|tar.gz` (install.sh's download_hash reads it the same way:
  `grep " k3s${SUFFIX}$"`, the digest before the first blank);
- `INSTALL/<tag>/install.sh`, hashed here (the release publishes no digest for it; the bake's
  10-install-k3s-airgap.sh downloads the same URL and checks this digest).

It also checks that the pinned Azure CLI (`azure-cli` on PyPI's JSON API) and each az extension version
(the extension index `az extension add` resolves from) exist, so a typo fails here rather than in Packer.

Every base URL can be overridden through the environment (image CI behind a mirror, tests on loopback).
Nothing is written unless every fetch and check succeeded and the new spec still validates.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.spec import K3S_VERSION_RE, ImageSpec, SpecError, parse_spec
from firstboot.fsutil import atomic_write
from firstboot.located_yaml import load_located, read_located

# Defaults, and the environment variables that replace them.
URLS = {
    "ARCBAKE_K3S_RELEASES_URL": "https://github.com/k3s-io/k3s/releases/download",
    "ARCBAKE_K3S_INSTALL_URL": "https://raw.githubusercontent.com/k3s-io/k3s",
    "ARCBAKE_PYPI_URL": "https://pypi.org/pypi",
    # What https://aka.ms/azure-cli-extension-index-v1 redirects to.
    "ARCBAKE_AZ_EXTENSION_INDEX_URL": "https://azcliextensionsync.blob.core.windows.net/index1/index.json",
}
TIMEOUT = 60.0
# Caps per document: the checksum list is a few hundred bytes, install.sh ~40 KiB, the index ~20 MiB.
_CAPS = {"sums": 1 << 20, "install": 4 << 20, "pypi": 16 << 20, "index": 128 << 20}
# The spec's extension keys and the names the index (and `az extension add --name`) use.
EXTENSION_NAMES = {"connectedk8s": "connectedk8s", "k8s_extension": "k8s-extension",
                   "k8s_configuration": "k8s-configuration"}  # fmt: skip
# A plain or quoted one-line scalar (what a digest or a version is).
_SCALAR = re.compile(r"""'[^'\n]*'|"[^"\n]*"|[^\s#,\[\]{}]+""")
_SUM_LINE = re.compile(r"^([0-9a-f]{64})[ \t]+\*?(\S+)$")


class PinError(Exception):
    """A fetch or check failed; nothing was written. The message names the URL or key."""


@dataclass
class PinResult:
    """What pin found and changed."""

    path: Path
    version: str
    sha256: dict[str, str]
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    checked: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The --format json document."""
        return {
            "ok": True,
            "spec": str(self.path),
            "k3s": {"version": self.version, "sha256": self.sha256},
            "changed": {k: {"old": old, "new": new} for k, (old, new) in self.changed.items()},
            "checked": self.checked,
        }


def base_urls(environ: Mapping[str, str]) -> dict[str, str]:
    """The four base URLs, each from its environment variable when set."""
    return {name: (environ.get(name) or default).rstrip("/") for name, default in URLS.items()}


def _get(url: str, what: str, *, missing_ok: bool = False) -> bytes | None:
    if not url.startswith(("https://", "http://")):
        raise PinError(f"{what}: {url} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "arcbake-pin"})  # noqa: S310 - checked
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - checked above
            body: bytes = response.read(_CAPS[what] + 1)
    except urllib.error.HTTPError as exc:
        if missing_ok and exc.code == 404:
            return None
        raise PinError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PinError(f"GET {url}: {reason}") from None
    if len(body) > _CAPS[what]:
        raise PinError(f"GET {url}: larger than {_CAPS[what]} bytes")
    return body


def parse_sums(text: str) -> dict[str, str]:
    """`sha256sum` output (`HEX  NAME`, `HEX *NAME`) as name -> digest; other lines are ignored."""
    out = {}
    for line in text.splitlines():
        match = _SUM_LINE.match(line.strip())
        if match:
            out[match[2]] = match[1]
    return out


def release_checksums(spec: ImageSpec, version: str, urls: Mapping[str, str]) -> dict[str, str]:
    """The three digests the build verifies, for `version` (binary, airgap images, install script)."""
    tag = version.replace("+", "%2B")
    sums_url = f"{urls['ARCBAKE_K3S_RELEASES_URL']}/{tag}/sha256sum-amd64.txt"
    sums = parse_sums((_get(sums_url, "sums") or b"").decode("utf-8", "replace"))
    images = f"k3s-airgap-images-amd64.{spec.k3s.airgap_images_format}"
    missing = [name for name in ("k3s", images) if name not in sums]
    if missing:
        raise PinError(f"{sums_url} lists no {' and no '.join(missing)}")
    install = _get(f"{urls['ARCBAKE_K3S_INSTALL_URL']}/{tag}/install.sh", "install") or b""
    if not install.startswith(b"#!"):
        raise PinError(f"{urls['ARCBAKE_K3S_INSTALL_URL']}/{tag}/install.sh is not a script")
    return {
        "binary": sums["k3s"],
        "airgap_images": sums[images],
        "install_script": hashlib.sha256(install).hexdigest(),
    }


def check_azure(spec: ImageSpec, urls: Mapping[str, str]) -> dict[str, str]:
    """Raise PinError unless the pinned az CLI and every extension version exist; return what was seen."""
    cli = spec.azure.cli_version
    if _get(f"{urls['ARCBAKE_PYPI_URL']}/azure-cli/{cli}/json", "pypi", missing_ok=True) is None:
        raise PinError(f"azure.cli_version: azure-cli {cli} is not a release (PyPI has no such version)")
    index_url = urls["ARCBAKE_AZ_EXTENSION_INDEX_URL"]
    try:
        index = json.loads(_get(index_url, "index") or b"")
        extensions = index["extensions"]
    except (ValueError, KeyError, TypeError):
        raise PinError(f"{index_url} is not an az extension index (no `extensions` map)") from None
    checked = {"azure.cli_version": cli}
    for key, name in EXTENSION_NAMES.items():
        wanted = getattr(spec.azure.extensions, key)
        entries = extensions.get(name) if isinstance(extensions, dict) else None
        versions = {str(e.get("metadata", {}).get("version")) for e in entries or [] if isinstance(e, dict)}
        if wanted not in versions:
            raise PinError(
                f"azure.extensions.{key}: {name} {wanted} is not in the extension index {index_url}"
            )
        checked[f"azure.extensions.{key}"] = wanted
    return checked


def _replace_scalars(text: str, edits: list[tuple[Any, str, str]]) -> str:
    """`text` with each (mapping, key)'s scalar value replaced in place, at the line and column the
    round-trip loader recorded: every other byte (comments, indentation, quoting style, flow
    collections) stays as the user wrote it, which re-dumping the document would not guarantee."""
    lines = text.splitlines(keepends=True)
    for mapping, key, value in edits:
        line, col = mapping.lc.value(key)
        match = _SCALAR.match(lines[line], col)
        if match is None:
            raise PinError(f"cannot find the value of {key} on line {line + 1}")
        quote = match[0][0] if match[0][0] in "'\"" else ""
        lines[line] = lines[line][:col] + f"{quote}{value}{quote}" + lines[line][match.end() :]
    return "".join(lines)


def _yaml() -> Any:
    from ruamel.yaml import YAML  # here: `builder --help` need not load it

    return YAML(typ="rt")  # the round-trip loader: it records each value's line and column


def pin(path: Path, environ: Mapping[str, str], version: str | None = None) -> PinResult:
    """Fetch the release's checksums and write them (and `version`) into the spec at `path`.

    Raises SpecError (the spec is invalid, before or after), PinError (a fetch or check failed) or
    ValueError (`version` is not an exact release). Writes atomically, keeping the file's mode.
    """
    if version is not None and not re.fullmatch(K3S_VERSION_RE, version):
        raise ValueError(f"--k3s {version!r} is not an exact K3s release like v1.31.4+k3s1")
    # Not load_spec: its placeholder warnings are about what this command is fixing.
    spec = parse_spec(read_located(path, SpecError))
    version = version or spec.k3s.version
    urls = base_urls(environ)
    sums = release_checksums(spec, version, urls)
    checked = check_azure(spec, urls)

    text = path.read_text(encoding="utf-8")
    k3s = _yaml().load(text)["k3s"]
    edits: list[tuple[Any, str, str]] = []
    changed: dict[str, tuple[str, str]] = {}
    if str(k3s["version"]) != version:
        changed["k3s.version"] = (str(k3s["version"]), version)
        edits.append((k3s, "version", version))
    for key, digest in sums.items():
        old = str(k3s["sha256"][key])
        if old != digest:
            changed[f"k3s.sha256.{key}"] = (old, digest)
            edits.append((k3s["sha256"], key, digest))
    new_text = _replace_scalars(text, edits)
    parse_spec(load_located(new_text, str(path)))  # SpecError: never write a spec that no longer loads
    if changed:
        atomic_write(path, new_text)  # keeps the file's mode
    return PinResult(path, version, sums, changed, checked)


__all__ = ["URLS", "PinError", "PinResult", "SpecError", "base_urls", "parse_sums", "pin"]
