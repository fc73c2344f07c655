"""`firstboot doctor --bundle PATH`: one tarball to attach to a ticket, every secret value redacted.

It holds: the status, doctor's JSON, the journal of the firstboot unit, the K3s and chronyd journal tails,
the Arc agents' (and Flux's) recent pod logs, what timedatectl and firewall-cmd say, and the
configuration files that decide the chain (K3s config and resolv.conf, chrony, resolv.conf, firstboot's
cached onboarding config, the image's /etc/arcbake files). Never the secrets file, the K3s token file or
the kubeconfig (it holds a client key): an allow-list, not a sweep.

Every text goes through `subp.redact` with every secret value this clone holds (guestinfo's newer set or
the instance-bound secrets file, the K3s token file) and each line of the multi-line ones (a PEM or SSH
key can reach a log line by line). The tarball is created 0600 (fchmod, whatever the umask) beside PATH
and renamed into place, so a reader never sees half of it and nobody else can read it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from firstboot import kube, metadata, secretstore, subp
from firstboot.contract import KEY_SECRETS, OnboardingSecrets
from firstboot.fsutil import STATE_DIR
from firstboot.sources import SourceError
from firstboot.step import Context

LOG = logging.getLogger(__name__)

UNIT = "arcbake-firstboot.service"
JOURNAL_LINES = {"firstboot": 5000, "k3s": 1000, "chronyd": 300}
POD_LOG_LINES = 300
POD_NAMESPACES = ("azure-arc", "flux-system")
FILE_CAP = 1 << 20
TOOL_TIMEOUT = 20.0
KUBE_TIMEOUT = 10
CONFIG_FILES = (
    "/etc/rancher/k3s/config.yaml",
    "/etc/rancher/k3s/resolv.conf",
    "/etc/chrony.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/arcbake/image.json",
    "/etc/arcbake/k3s-server.yaml",
    "/etc/arcbake/k3s.service.env",
    f"{STATE_DIR}/config.json",
    f"{STATE_DIR}/status.json",
)
CONFIG_DIRS = ("/etc/rancher/k3s/config.yaml.d",)
COMMANDS = {
    "journal/firstboot.log": ["journalctl", "--no-pager", "-o", "short-iso", "-n",
                              str(JOURNAL_LINES["firstboot"]), "-u", UNIT],
    "journal/k3s.log": ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(JOURNAL_LINES["k3s"]),
                        "-u", "k3s", "-u", "k3s-agent"],
    "journal/chronyd.log": ["journalctl", "--no-pager", "-o", "short-iso", "-n",
                            str(JOURNAL_LINES["chronyd"]), "-u", "chronyd"],
    "commands/timedatectl-show.txt": ["timedatectl", "show"],
    "commands/firewall-cmd-list-all.txt": ["firewall-cmd", "--list-all"],
    "commands/firewall-cmd-list-all-trusted.txt": ["firewall-cmd", "--list-all", "--zone=trusted"],
}  # fmt: skip
# Pieces of multi-line secrets shorter than this are too common to redact (`-----END`, base64 padding).
MIN_LINE_SECRET = 12


def secret_values(ctx: Context) -> list[str]:
    """Every secret value this clone holds (what doctor loaded, guestinfo's set, the instance's file, the
    K3s token file), with each long-enough line of the multi-line ones."""
    from firstboot.steps.k3s import TOKEN_FILE

    values = list(ctx.secret_values())
    try:  # guestinfo's set too: doctor kept only the newer of it and the held one
        text = metadata.read_value(ctx.source, KEY_SECRETS)
        if text:
            values += OnboardingSecrets.model_validate(metadata.parse_mapping(KEY_SECRETS, text)).values()
    except (metadata.MetadataError, SourceError, ValidationError) as exc:
        LOG.debug("bundle: guestinfo secrets unreadable: %s", type(exc).__name__)
    if ctx.instance_id:
        try:
            held = secretstore.read(ctx.root, ctx.instance_id)
        except secretstore.SecretStoreError as exc:
            LOG.debug("bundle: secrets file unreadable: %s", exc)
            held = None
        if held is not None:
            values += held.secrets.values()
    token = _read_file(ctx.path(TOKEN_FILE))  # None on a node without a join token
    if token:
        values.append(token.strip())
    pieces = [ln.strip() for v in values if "\n" in v for ln in v.splitlines()]
    return list(dict.fromkeys(values + [p for p in pieces if len(p) >= MIN_LINE_SECRET]))


def _read_file(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None  # a FIFO or device planted under a config name is never read
        data = handle.read(FILE_CAP)
    return data.decode("utf-8", "replace")


def _pod_logs(ctx: Context) -> tuple[dict[str, str], list[str]]:
    """`pods/NS/POD_CONTAINER.log` -> the container's recent log; and what could not be read."""
    out: dict[str, str] = {}
    try:
        api = kube.client_from(ctx.path(kube.KUBECONFIG))
    except kube.KubeUnavailable as exc:
        return out, [f"pod logs: {exc}"]
    notes = []
    with api:
        core: Any = kube.client.CoreV1Api(api)  # untyped pod objects, as in kube.diagnose_pods
        for ns in POD_NAMESPACES:
            try:
                pods = core.list_namespaced_pod(ns, _request_timeout=KUBE_TIMEOUT).items
            except kube.api_errors() as exc:
                notes.append(f"pods of {ns}: {type(exc).__name__}: {exc}")
                continue
            for pod in pods:
                for container in pod.spec.containers or []:
                    name = f"pods/{ns}/{pod.metadata.name}_{container.name}.log"
                    try:
                        out[name] = kube.recent_log(
                            core, ns, pod.metadata.name, container.name, POD_LOG_LINES
                        )
                    except kube.api_errors() as exc:
                        notes.append(f"{name}: {type(exc).__name__}: {exc}")
    return out, notes


def collect(ctx: Context, doctor_doc: dict[str, Any]) -> dict[str, str]:
    """Every member of the bundle, name -> text (not yet redacted)."""
    members: dict[str, str] = {"doctor.json": json.dumps(doctor_doc, indent=2) + "\n"}
    notes: list[str] = []
    for absolute in CONFIG_FILES:
        text = _read_file(ctx.path(absolute))
        if text is None:
            notes.append(f"{absolute}: absent or unreadable")
        else:
            members[f"files{absolute}"] = text
    for folder in CONFIG_DIRS:
        for entry in sorted(ctx.path(folder).glob("*.yaml")):
            text = _read_file(entry)
            if text is not None:
                members[f"files{folder}/{entry.name}"] = text
    for name, argv in COMMANDS.items():
        try:
            result = subp.run(
                argv, timeout=TOOL_TIMEOUT, env=ctx.env or None, check=False, description=argv[0]
            )
        except subp.ProcessExecutionError as exc:
            notes.append(f"{name}: {exc}")
            continue
        failed = f"\n[stderr, exit {result.exit_code}]\n{result.stderr}" if result.exit_code else ""
        members[name] = result.stdout + failed
    logs, log_notes = _pod_logs(ctx)
    members.update(logs)
    notes += log_notes
    members["MANIFEST.txt"] = (
        "arcbake firstboot support bundle (secret values replaced by ***)\n"
        f"instance-id: {ctx.instance_id or 'unknown'}\n"
        f"created: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n\n"
        "members:\n"
        + "".join(f"  {n}\n" for n in sorted(members))
        + "\nnot collected:\n"
        + "".join(f"  {n}\n" for n in notes)
    )
    return members


def write(path: Path, members: dict[str, str], secrets: Iterable[str]) -> Path:
    """Write the redacted tarball (gzip) at `path`, mode 0600 whatever the umask; returns `path`."""
    secret_list = list(secrets)
    path = path.absolute()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            now = int(time.time())
            for name in sorted(members):
                data = subp.redact(members[name], secret_list).encode("utf-8")
                info = tarfile.TarInfo(f"arcbake-bundle/{name}")
                info.size, info.mode, info.mtime = len(data), 0o600, now
                tar.addfile(info, io.BytesIO(data))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
