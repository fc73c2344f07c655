"""What a real `k3s server` / `k3s agent` of the pinned minor accepts from its configuration files.

Stdlib + PyYAML only (the systemctl double imports it as a script). The flag tables and their sources are
in `data/k3s_flags.json`; the merge follows k3s-io/k3s `pkg/configfilearg/parser.go` `readConfigFile`:
`config.yaml` first, then `config.yaml.d/*.yaml|*.yml` in directory (name) order; a later key replaces an
earlier one, `key+:` appends to it; each key becomes `--key=value` (one per list item). `k3s server` drops
keys it does not define (`stripInvalidFlags`, a warning); `k3s agent` has no such table
(`defaultparser.go` `ValidFlags` names only server and etcd-snapshot), so urfave/cli refuses the key.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent / "data" / "k3s_flags.json"
CONFIG = "etc/rancher/k3s/config.yaml"
ROLES = ("server", "agent")
_BOOL = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}  # Go ParseBool
_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$|^0$")


class K3sRefused(Exception):
    """What the real binary would print before exiting non-zero."""


def flag_table(role: str) -> dict[str, str]:
    """Every name (aliases included) `k3s ROLE` defines, mapped to its kind."""
    table: dict[str, str] = json.loads(DATA.read_text())[role]
    out: dict[str, str] = {}
    for names, kind in table.items():
        for name in names.split(","):
            out[name] = kind
    return out


def canonical(role: str, name: str) -> str:
    """The first (long) name of the flag `name` belongs to, so `-t` and `token` compare equal."""
    for names in json.loads(DATA.read_text())[role]:
        if name in names.split(","):
            return str(names.split(",")[0])
    return name


def config_files(root: Path) -> list[Path]:
    """config.yaml (when present) and its drop-ins, in the order K3s reads them."""
    base = root / CONFIG
    dropins = base.parent / (base.name + ".d")
    files = [base] if base.is_file() else []
    if dropins.is_dir():
        files += [
            p
            for p in sorted(dropins.iterdir(), key=lambda p: p.name)
            if p.is_file() and p.name.lower().endswith((".yaml", ".yml"))
        ]
    return files


def _to_string(value: Any) -> str:
    # wrangler convert.ToString: YAML booleans print as Go does, null as "".
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _slice(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    text = _to_string(value).strip()
    return [text] if text else []


def merged_args(root: Path) -> list[tuple[str, str]]:
    """`(key, value)` pairs in the order K3s turns the merged files into `--key=value` arguments."""
    order: list[str] = []
    values: dict[str, Any] = {}
    for path in config_files(root):
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise K3sRefused(f"{path}: yaml: cannot unmarshal into a map")
        for raw_key, value in doc.items():
            key = _to_string(raw_key)
            append = key.endswith("+")
            key = key.removesuffix("+")
            if key not in values:
                order.append(key)
            if append and key in values:
                values[key] = _slice(values[key]) + _slice(value)
            else:
                values[key] = value
    pairs: list[tuple[str, str]] = []
    for key in order:
        value = values[key]
        items = value if isinstance(value, list) else [value]
        pairs += [(key, _to_string(item)) for item in items]
    return pairs


@dataclass
class NodeConfig:
    """The configuration one K3s process runs with, after the rules of its role."""

    role: str
    values: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """The effective value of a single-valued flag (the last one given, as urfave/cli keeps)."""
        found = self.values.get(name)
        return found[-1] if found else None

    def flag(self, name: str) -> bool:
        """A boolean flag's value."""
        return (self.get(name) or "false") in {"1", "t", "T", "TRUE", "true", "True"}


def check_config(root: Path, role: str) -> NodeConfig:
    """Merge the files under `root` as `k3s ROLE` does and refuse what it refuses (K3sRefused)."""
    if role not in ROLES:
        raise ValueError(role)
    table = flag_table(role)
    node = NodeConfig(role)
    for key, value in merged_args(root):
        kind = table.get(key)
        if kind is None:
            if role == "server":
                node.warnings.append(f"Unknown flag --{key} found in config.yaml, skipping")
                continue
            raise K3sRefused(f"Incorrect Usage. flag provided but not defined: -{key}")
        if kind == "bool" and value not in _BOOL:
            raise K3sRefused(f'invalid boolean value "{value}" for -{key}: parse error')
        if kind == "int" and not re.fullmatch(r"[-+]?\d+", value):
            raise K3sRefused(f'invalid value "{value}" for flag -{key}: parse error')
        if kind == "duration" and not _DURATION.match(value):
            raise K3sRefused(f'invalid value "{value}" for flag -{key}: parse error')
        node.values.setdefault(canonical(role, key), []).append(value)
    return node


def node_token(root: Path, node: NodeConfig) -> str | None:
    """The join token the process holds: `token-file` (read under root, stripped) wins over `token`."""
    token_file = node.get("token-file")
    if token_file:
        path = root / token_file.lstrip("/")
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise K3sRefused(f"open {token_file}: {exc.strerror}") from None
    return node.get("token")


def check_node(root: Path, role: str) -> tuple[NodeConfig, str | None]:
    """Flags, then the join rules of pkg/cli/agent/agent.go (agents) and of a joining server."""
    node = check_config(root, role)
    token = node_token(root, node)
    if role == "agent":
        if not token:
            raise K3sRefused("--token is required")
        if not node.get("server"):
            raise K3sRefused("--server is required")
    elif node.get("server") and not token:
        raise K3sRefused("--token is required to join a cluster (server)")
    return node, token


# The node-password rule. k3s-io/k3s `pkg/nodepassword/nodepassword.go` `Ensure`: the supervisor keeps
# a hash of each node's password in the Secret `<node>.node-password.k3s` (kube-system, immutable), creates
# it on a node's first registration and afterwards verifies the password a node joining under that name
# presents (`verifyHash`); the agent's registration (`pkg/server`) then fails with "Node password
# rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not match server
# node-passwd entry, try enabling a unique node name with the --with-node-id flag".
# `pkg/nodepassword/controller.go` deletes the Secret when its Node is deleted, which frees the name.
# K3s docs (docs.k3s.io/installation/requirements, "Prerequisites"): two nodes cannot have the same
# hostname; when hostnames are reused, use `--with-node-id` or a unique `--node-name`.
NODE_PASSWORD_FILE = "etc/rancher/node/password"


def node_password(root: Path) -> str:
    """The password this node presents: `/etc/rancher/node/password`, generated on first start as K3s
    does (`pkg/agent/config` `ensureNodePassword`)."""
    path = root / NODE_PASSWORD_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(16).hex() + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def admit_node(passwords: dict[str, str], name: str, password: str) -> None:
    """Register `name` with `password` in a cluster's stored node passwords, or refuse as K3s does."""
    held = passwords.get(name)
    if held is not None and held != password:
        raise K3sRefused(
            f"Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may "
            f"not match server node-passwd entry, try enabling a unique node name with the --with-node-id "
            f"flag (node {name})"
        )
    passwords[name] = password


def delete_node(passwords: dict[str, str], name: str) -> None:
    """`kubectl delete node NAME`: the Node and its `NAME.node-password.k3s` Secret go."""
    passwords.pop(name, None)


# How a server's embedded etcd starts. k3s-io/k3s `pkg/etcd/etcd.go` `(*ETCD).Start` (v1.26 to v1.32): a
# node whose etcd data exists (`IsInitialized`) starts as the member it was; otherwise with no `--server`
# (`clientAccessInfo == nil`) it calls `newCluster`, a new single-member cluster, and with `--server` it
# joins the cluster behind that URL. `cluster-init` does not make it look for one: docs.k3s.io
# (datastore/ha-embedded) starts only the FIRST server with `--cluster-init` and joins every other one with
# `--server https://<server>:6443` and the token. So a `cluster-init` server that starts with no data while
# its cluster has live etcd members forms a second cluster beside them (split brain); real K3s starts
# happily, the double refuses it so a test sees it.
ETCD_DATA_DIR = "var/lib/rancher/k3s/server/db/etcd"


def etcd_start(*, cluster_init: bool, server: str | None, initialized: bool, live_members: list[str]) -> str:
    """What a server's etcd does at start (`member`, `join`, `new`); K3sRefused for a second cluster."""
    if initialized:
        return "member"
    if server:
        return "join"
    if cluster_init and live_members:
        raise K3sRefused(
            f"cluster-init with no etcd data and no --server starts a NEW etcd cluster while this cluster's "
            f"members {', '.join(sorted(live_members))} are up (split brain): join one with --server"
        )
    return "new"
