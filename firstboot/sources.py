"""Where guestinfo keys come from and go back to: VMware tools, `VMX_GUESTINFO_*` variables, or a file.

`--source auto` uses `vmware-rpctool` when it answers (inside a VMware VM), else the environment when any
`VMX_GUESTINFO_*` variable is set, else it fails with a clear message.

Values are returned the way cloud-init's DataSourceVMware reads them: trailing whitespace stripped, and an
empty value or `---` (what a redacted key holds) means unset.

Writes (`set`) go back to the same source:
- guestinfo: `vmware-rpctool "info-set KEY VALUE"` (falling back to `vmtoolsd --cmd`);
- file: the mapping is rewritten atomically (temp file + rename, mode kept);
- env: the environment of a VM cannot be written from inside it, so writes land in an in-process overlay
  (later `get` calls in the same process see them) and are logged at debug level. status.json and the
  secrets file on disk carry the state across runs instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from firstboot import encoding, subp
from firstboot.boundedread import BoundedReadError, read_bounded
from firstboot.fsutil import atomic_write

LOG = logging.getLogger(__name__)

NO_VALUE = "No value found"
EMPTY_VALUE = "---"
RPC_TIMEOUT = 10.0
ENV_PREFIX = "VMX_GUESTINFO"
# A metadata file holds a handful of keys, each capped at encoding.MAX_ENCODED.
MAX_SOURCE_FILE = 4 * encoding.MAX_ENCODED


class SourceError(Exception):
    """The metadata source cannot be used; the message says why and what to do."""


def normalize(value: str | None) -> str | None:
    """cloud-init's `get_none_if_empty_val`: rstrip, and empty or `---` means unset."""
    if value is None:
        return None
    value = value.rstrip()
    if not value or value == EMPTY_VALUE:
        return None
    return value


def env_name(key: str) -> str:
    """cloud-init's variable name for a key: `guestinfo.arcbake.config` -> VMX_GUESTINFO_ARCBAKE_CONFIG.

    Same rule as DataSourceVMware.get_guestinfo_envvar_key_name: prefix `vmx.`, upper-case, `.` -> `_`.
    """
    if not key.startswith("guestinfo."):
        key = "guestinfo." + key
    return ("vmx." + key).upper().replace(".", "_")


class GuestinfoSource:
    """guestinfo through `vmware-rpctool`, falling back to `vmtoolsd --cmd` when rpctool is missing."""

    name = "guestinfo"

    def __init__(self, rpctool: str = "vmware-rpctool", vmtoolsd: str = "vmtoolsd") -> None:
        self._rpctool = rpctool
        self._vmtoolsd = vmtoolsd

    def _call(self, command: str) -> subp.Result:
        try:
            return subp.run([self._rpctool, command], timeout=RPC_TIMEOUT, check=False)
        except subp.ProcessExecutionError as exc:
            if not exc.not_found:
                raise SourceError(f"vmware-rpctool {command.split()[0]} failed: {exc.reason}") from None
        try:
            return subp.run([self._vmtoolsd, "--cmd", command], timeout=RPC_TIMEOUT, check=False)
        except subp.ProcessExecutionError as exc:
            raise SourceError(
                f"neither vmware-rpctool nor vmtoolsd could run ({exc.reason}); install open-vm-tools"
            ) from None

    def probe(self) -> None:
        """Raise SourceError unless guestinfo can be read (we are in a VMware VM with tools)."""
        self.get("guestinfo.arcbake.config")

    def get(self, key: str) -> str | None:
        """The value of `key`, None when unset."""
        res = self._call(f"info-get {key}")
        if res.exit_code == 0:
            return normalize(res.stdout)
        text = (res.stderr + res.stdout).strip()
        if NO_VALUE in text:
            return None
        if "must be run inside a virtual machine" in text:
            raise SourceError(
                "guestinfo is not readable: vmware-rpctool must run inside a VMware virtual machine; "
                "outside VMware use --source env (VMX_GUESTINFO_* variables) or --source file:PATH"
            )
        raise SourceError(f"info-get {key} failed with exit code {res.exit_code}: {text[-200:]}")

    def set(self, key: str, value: str) -> None:
        """Write `key`; raise OSError when the hypervisor refuses (callers tolerate it for status)."""
        # guestinfo cannot hold an empty string; a single space is as close as it gets (like cloud-init).
        res = self._call(f"info-set {key} {value or ' '}")
        if res.exit_code != 0:
            raise OSError(
                f"info-set {key} failed with exit code {res.exit_code}: {res.stderr.strip()[-200:]}"
            )


class EnvSource:
    """cloud-init's `VMX_GUESTINFO_*` variables; writes go to an in-process overlay only (see module doc)."""

    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ
        self._overlay: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        """The value of `key` from the overlay or the environment, None when unset."""
        if key in self._overlay:
            return normalize(self._overlay[key])
        return normalize(self._environ.get(env_name(key)))

    def set(self, key: str, value: str) -> None:
        """Remember `key` for this process; the VM's environment cannot be written."""
        LOG.debug("env source: %s kept in memory only (environment variables cannot be written back)", key)
        self._overlay[key] = value


class FileSource:
    """A YAML or JSON mapping of guestinfo key to value, exactly as the VM's keys would hold them."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data = self._load()

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            raise SourceError(f"{self.path}: metadata file not found")
        try:
            text = read_bounded(self.path, MAX_SOURCE_FILE).decode("utf-8")
        except BoundedReadError as exc:
            raise SourceError(f"{self.path}: {exc} (metadata is a regular file of guestinfo keys)") from None
        except UnicodeDecodeError as exc:
            raise SourceError(f"{self.path}: not UTF-8 text (byte {exc.start})") from None
        try:
            data: Any = yaml.safe_load(text) if text.strip() else {}
        except RecursionError:
            # PyYAML's composer recurses per nesting level: a deeply nested file is not a metadata file.
            raise SourceError(f"{self.path}: nested too deeply to parse") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise SourceError(f"{self.path}{where}: not valid YAML or JSON") from None
        if not isinstance(data, dict):
            raise SourceError(f"{self.path}: must be a mapping of guestinfo key to value")
        out: dict[str, str] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise SourceError(f"{self.path}: key {key!r} is not a string")
            if value is None:
                continue
            if not isinstance(value, str | int | float | bool):
                raise SourceError(f"{self.path}: {key}: value must be a string (as guestinfo holds it)")
            out[key] = value if isinstance(value, str) else json.dumps(value)
        return out

    def get(self, key: str) -> str | None:
        """The value of `key`, None when absent, empty or `---`."""
        return normalize(self._data.get(key))

    def set(self, key: str, value: str) -> None:
        """Write `key` and rewrite the file atomically (temp file in the same dir, then rename)."""
        self._data[key] = value
        text = json.dumps(self._data, indent=2, sort_keys=True) + "\n"
        if self.path.suffix.lower() in (".yaml", ".yml"):
            text = yaml.safe_dump(self._data, sort_keys=True, default_flow_style=False)
        atomic_write(self.path, text)


def make_source(
    spec: str, environ: Mapping[str, str] | None = None
) -> GuestinfoSource | EnvSource | FileSource:
    """Build the source named by `--source` (`auto`, `guestinfo`, `env`, `file:PATH`)."""
    environ = environ if environ is not None else os.environ
    if spec.startswith("file:"):
        return FileSource(Path(spec[len("file:") :]))
    if spec == "guestinfo":
        return GuestinfoSource()
    if spec == "env":
        return EnvSource(environ)
    if spec != "auto":
        raise SourceError(f"unknown --source {spec!r} (expected auto, guestinfo, env or file:PATH)")
    guest = GuestinfoSource()
    has_tools = shutil.which("vmware-rpctool") or shutil.which("vmtoolsd")
    if has_tools:
        try:
            guest.probe()
            return guest
        except SourceError as exc:
            LOG.debug("guestinfo not usable: %s", exc)
    if any(k.startswith(ENV_PREFIX + "_") for k in environ):
        return EnvSource(environ)
    raise SourceError(
        "no metadata source: guestinfo is not readable (not a VMware VM, or open-vm-tools missing) and no "
        "VMX_GUESTINFO_* variables are set; use --source file:PATH or --source env"
    )
