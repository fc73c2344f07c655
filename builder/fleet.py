"""Fleet files: which VMs to clone from which template, and what each one receives in guestinfo.

A fleet file names the template, the vSphere placement of the clones, `defaults` and `vms`. A VM's key
replaces the same key of `defaults`, except `arc`, `tags` and `secrets`, which merge key by key (so a
fleet states its Azure subscription once and each server only its cluster name).

Each VM's data is merged as plain data (defaults, then the VM) and validated straight into the
contract's models (`TimeConfig`, `DnsConfig`, `ProxyConfig`, `K3sSettings`, `ArcConfig`, `FluxConfig`):
a knob's rule lives in `firstboot/contract.py` alone. Validation reports every problem at once as
`FILE:LINE: path: message` (exit 3), each located where the value was written (`defaults.time...` or
`vms.2.time...`); first the schema, then the cross checks (unique names, agents have a server to join,
servers have an `arc` section and the secret its auth method needs).

Secrets are references only, `{env: NAME}` or `{file: PATH}` (relative to the fleet file); their values
are read by `resolve_secrets` at deploy time and go nowhere but the VM's `guestinfo.arcbake.secrets`.

Per VM this module produces the payloads of the guestinfo contract (ARCHITECTURE.md): cloud-init
meta-data (instance-id, local-hostname, network v2), `#cloud-config` user-data, firstboot's
`OnboardingConfig` and `OnboardingSecrets`, and an identity hash of everything but secret values, which
deploy stores in the VM (non-guestinfo key) to tell an unchanged VM from a changed one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    IPvAnyAddress,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from builder import topology
from builder.spec import InventoryName, SshPublicKey
from builder.template_names import check_placeholders
from firstboot.boundedread import BoundedReadError, on_pseudo_fs, read_bounded
from firstboot.contract import (
    PATTERN_HINTS,
    ArcAuth,
    ArcConfig,
    ArcTags,
    Bool,
    DnsConfig,
    FluxConfig,
    FQDNOrHost,
    HostName,
    K3sConfig,
    K3sSettings,
    OnboardingConfig,
    OnboardingSecrets,
    ProxyConfig,
    Role,
    TimeConfig,
)
from firstboot.contract import (
    Model as _Model,
)
from firstboot.located_yaml import (
    Hints,
    InputError,
    Issue,
    LocatedYaml,
    PathKey,
    dotted,
    issues_from_validation,
    read_located,
)

FLEET_SCHEMA_VERSION: Literal[1] = 1
K3S_API_PORT = 6443

# vSphere allows almost anything in a VM name; we keep names that are safe in paths and messages.
VmName = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
LinuxUser = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]


_HINTS = Hints(
    patterns=PATTERN_HINTS,
    credentials="unknown key; a fleet names secrets only under secrets:, as {env: NAME} or {file: PATH}",
)


class FleetError(InputError):
    """The fleet file (or a secret it references) is invalid; exit code 3."""


# builder's own environment (vSphere credentials, Packer's variables, arcbake's settings): a reference to
# it would copy the operator's credentials into a clone's guestinfo.
RESERVED_ENV_PREFIXES = ("VSPHERE_", "PKR_VAR_", "ARCBAKE_")
# A secret is a password, token, key or certificate chain; anything larger is a mistake (or /dev/zero).
MAX_SECRET_BYTES = 64 * 1024


class SecretRef(_Model):
    """Where a secret value comes from: an environment variable or a file. Never the value itself.

    Not builder's own variables (RESERVED_ENV_PREFIXES); files are regular files of at most
    MAX_SECRET_BYTES (a symlink is followed, and what it reaches must be one), never under /proc, /sys, /dev.
    """

    env: EnvName | None = None
    file: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")] | None = None

    @field_validator("env")
    @classmethod
    def _not_builders_own(cls, value: str | None) -> str | None:
        if value is not None and value.upper().startswith(RESERVED_ENV_PREFIXES):
            reserved = ", ".join(f"{p}*" for p in RESERVED_ENV_PREFIXES)
            raise ValueError(
                f"{value} is builder's own environment ({reserved}): "
                "name a variable that holds only this secret"
            )
        return value

    @field_validator("file")
    @classmethod
    def _a_file(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if on_pseudo_fs(str(Path(value).expanduser())):
            raise ValueError("a secret file is a regular file: paths under /proc, /sys and /dev are refused")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference is {env: NAME} or {file: PATH}, exactly one")
        return self

    def describe(self) -> str:
        """`env:NAME` or `file:PATH`, for messages and the identity hash."""
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class GitSecretRefs(_Model):
    """Credentials for one Flux configuration's repository (the non-secret parts as the contract has them)."""

    https_user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]*$")] | None = None
    https_key: SecretRef | None = None
    ssh_private_key: SecretRef | None = None
    known_hosts: Annotated[str, Field(max_length=65536, pattern=r"^[\x20-\x7e\n]*$")] | None = None


class SecretRefs(_Model):
    """References to the secrets a clone receives in `guestinfo.arcbake.secrets`."""

    sp_secret: SecretRef | None = None
    sp_certificate_pem: SecretRef | None = None
    k3s_token: SecretRef | None = None
    git: dict[str, GitSecretRefs] = Field(default_factory=dict)

    @field_validator("sp_secret", "sp_certificate_pem", "k3s_token", mode="before")
    @classmethod
    def _not_a_value(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("write a reference ({env: NAME} or {file: PATH}), never the secret value")
        return value


class NetworkSpec(_Model):
    """DHCP (the default), or a static IPv4 address with prefix, gateway and DNS servers."""

    dhcp: Bool | None = None
    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns: list[IPvAnyAddress] = Field(default_factory=list)
    search: list[FQDNOrHost] = Field(default_factory=list)

    @field_validator("address", mode="before")
    @classmethod
    def _prefix(cls, value: Any) -> Any:
        if isinstance(value, str) and "/" not in value:
            raise ValueError("give the address with its prefix length, e.g. 192.168.10.21/24")
        return value

    @model_validator(mode="after")
    def _mode(self) -> NetworkSpec:
        if self.address is None:
            if self.dhcp is False:
                raise ValueError("dhcp: false needs a static address")
            if self.gateway is not None:
                raise ValueError("a gateway needs a static address (or leave it to DHCP)")
        else:
            if self.dhcp:
                raise ValueError("set either dhcp: true or a static address, not both")
            if self.gateway is not None and self.gateway not in self.address.network:
                raise ValueError(f"gateway {self.gateway} is outside {self.address.network}")
        return self

    @property
    def static(self) -> bool:
        """True when a static address is configured."""
        return self.address is not None


class VmEntry(_Model):
    """One VM after its entry is merged over `defaults`. The clone-side sections are the contract's own
    models; `arc` gets `cluster_name` (default: the host name) and `tags` filled in before validation."""

    name: VmName
    hostname: HostName
    domain: FQDNOrHost | None = None
    role: Role = Role.SERVER
    server: VmName | None = Field(
        default=None,
        description="the server VM this one joins: an agent's server (default: the fleet's only cluster), or "
        "for a server, the first server of its HA cluster (embedded etcd)",
    )
    # Section defaults by factory: a model default holding a list is unhashable, and pydantic deep-copies
    # such a default for every VM (most of the validation time of a 1,000-VM fleet).
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    user: LinuxUser = "arcbake"
    ssh_authorized_keys: list[SshPublicKey] = Field(default_factory=list)
    time: TimeConfig
    dns: DnsConfig = Field(default_factory=DnsConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    k3s: K3sSettings = Field(default_factory=K3sSettings)
    # Servers only (agents stop after K3s); `null` in a VM entry drops the defaults' section.
    arc: ArcConfig | None = None
    tags: ArcTags | None = None
    flux: FluxConfig = Field(default_factory=FluxConfig)
    secrets: SecretRefs | None = None


class FleetPlacement(_Model):
    """Where the clones go; overrides of the template's own network and datastore."""

    datacenter: InventoryName
    cluster: InventoryName | None = None
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")] | None = None
    resource_pool: InventoryName | None = None
    datastore: InventoryName | None = None
    network: InventoryName | None = None
    folder: Annotated[str, Field(max_length=400, pattern=r"^[A-Za-z0-9 ._()/-]*$")] = ""

    @model_validator(mode="after")
    def _compute(self) -> FleetPlacement:
        if not (self.cluster or self.host or self.resource_pool):
            raise ValueError("set one of cluster, host or resource_pool")
        return self


class FleetFile(_Model):
    """A fleet file as written: `defaults` and each of `vms` are merged as plain data, then validated as
    `VmEntry` (so their problems are located where they were written)."""

    schema_version: Literal[1] = FLEET_SCHEMA_VERSION
    name: VmName | None = Field(default=None, description="fleet name; default: the file name")
    template: Annotated[
        str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._(){}-]*$")
    ] = Field(description="template name, or a pattern with {date} {timestamp} {k3s} {os}: the newest match")
    vsphere: FleetPlacement
    defaults: dict[str, Any] = Field(default_factory=dict)
    vms: Annotated[list[dict[str, Any]], Field(min_length=1)]
    # etcd keeps quorum with a majority: 4 servers tolerate one failure like 3 do, 2 none like 1.
    allow_even_etcd_servers: Bool = Field(
        default=False, description="accept a cluster with an even number (2, 4, ...) of etcd servers"
    )

    _placeholders = field_validator("template")(check_placeholders)


@dataclass(frozen=True)
class FleetVM:
    """One VM with its settings merged and checked; the source of its guestinfo payloads."""

    name: str
    hostname: str
    role: Role
    server: str | None
    network: NetworkSpec
    user: str
    ssh_authorized_keys: tuple[str, ...]
    config: OnboardingConfig
    secret_refs: SecretRefs
    # Where each secret reference was written (`k3s_token`, `git.NAME.https_key` -> line, key path), so a
    # reference that cannot be read is reported at its line.
    secret_places: Mapping[str, tuple[int | None, str]] = field(default_factory=dict)

    def metadata(self, mac: str) -> dict[str, Any]:
        """cloud-init meta-data for the VMware datasource: instance-id, local-hostname, and the network v2
        bound to `mac`, the MAC vCenter gave the clone's NIC (deploy reads it from the clone)."""
        return {
            "instance-id": self.instance_id(),
            "local-hostname": self.hostname,
            "network": network_v2(self.network, mac),
        }

    def instance_id(self) -> str:
        """`iid-arcbake-NAME-DIGEST`: from what the fleet file says, not from the MAC, so a VM deployed again
        unchanged keeps its instance-id and its deploy identity."""
        body = {"local-hostname": self.hostname, "network": self.network.model_dump(mode="json")}
        digest = _digest({"md": body, "ud": self.userdata(), "cfg": self.config_json()})[:12]
        return f"iid-arcbake-{self.name}-{digest}"

    def userdata(self) -> str:
        """`#cloud-config` user-data: the admin user and its SSH keys, no password login."""
        fqdn = f"{self.hostname}.{self.config.domain}" if self.config.domain else self.hostname
        user: dict[str, Any] = {
            "name": self.user,
            "groups": ["wheel"],
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "lock_passwd": True,
        }
        if self.ssh_authorized_keys:
            user["ssh_authorized_keys"] = list(self.ssh_authorized_keys)
        cloud_config = {
            "hostname": self.hostname,
            "fqdn": fqdn,
            "users": [user],
            "ssh_pwauth": False,
            "disable_root": True,
        }
        # No line folding: an SSH key stays on one line, as people grep for it.
        return "#cloud-config\n" + yaml.safe_dump(cloud_config, sort_keys=False, width=1 << 16)

    def config_json(self) -> str:
        """`guestinfo.arcbake.config` as JSON."""
        return self.config.model_dump_json()

    def identity(self, template: str, placement: FleetPlacement) -> str:
        """sha256 of everything this VM is deployed from, secret values excluded (their references count)."""
        return _digest(
            {
                "template": template,
                "placement": placement.model_dump(mode="json"),
                "instance_id": self.instance_id(),
                "hostname": self.hostname,
                "network": self.network.model_dump(mode="json"),
                "userdata": self.userdata(),
                "config": json.loads(self.config_json()),
                "secrets": self.secret_refs.model_dump(mode="json"),
            }
        )


@dataclass(frozen=True)
class Fleet:
    """A validated fleet."""

    name: str
    path: Path
    template: str
    placement: FleetPlacement
    vms: tuple[FleetVM, ...]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The name cloud-init gives the clone's NIC (`set-name`): what vmxnet3's first NIC is called on EL, so the
# name is the same on every clone whatever its hardware version.
NIC_NAME = "ens192"


def network_v2(net: NetworkSpec, mac: str) -> dict[str, Any]:
    """cloud-init network config version 2 for the clone's one NIC, matched by its MAC and named NIC_NAME.

    The default route is a `routes:` entry (`gateway4` is deprecated); `0.0.0.0/0` rather than `default`,
    which the renderers of EL 8's cloud-init do not parse. DNS servers and search domains go with the NIC:
    NetworkManager makes them the clone's resolver, which firstboot's dns step repairs only when it fails
    (README, "DNS: who decides the clone's resolver").
    """
    nic: dict[str, Any] = {"match": {"macaddress": mac}, "set-name": NIC_NAME}
    if net.static and net.address is not None:
        nic["dhcp4"] = False
        nic["addresses"] = [str(net.address)]
        if net.gateway is not None:
            nic["routes"] = [{"to": "0.0.0.0/0", "via": str(net.gateway)}]
    else:
        nic["dhcp4"] = True
    if net.dns or net.search:
        nic["nameservers"] = {"addresses": [str(a) for a in net.dns], "search": list(net.search)}
    return {"version": 2, "ethernets": {NIC_NAME: nic}}


# Sections of a VM entry merged key by key over `defaults` (a VM states only its cluster name, its own
# tags, its own secrets); every other key of a VM entry replaces the default. `secrets.git` merges by name.
_MERGED_BY_KEY = ("arc", "tags", "secrets")


@dataclass
class _Merged:
    """One VM's data merged over `defaults`, and where each part of it was written in the file."""

    here: PathKey  # ("vms", N)
    data: dict[str, Any]
    origin: dict[PathKey, PathKey]

    def at(self, *path: str | int) -> PathKey:
        """Where to report a problem about `path`: where it was written, else under this VM's entry."""
        return self.place(path) if path[0] in self.data else (*self.here, *path)

    def place(self, path: PathKey) -> PathKey:
        """The file path a merged path was written at (the longest merged prefix with a known origin);
        a key written nowhere (a required one missing) belongs to this VM's entry."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.origin:
                return (*self.origin[path[:cut]], *path[cut:])
        return (*self.here, *path)

    def put(self, path: tuple[str, ...], value: Any, where: PathKey) -> None:
        target = self.data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        # What was below `path` came from elsewhere: forget it.
        for known in [k for k in self.origin if k[: len(path)] == path]:
            del self.origin[known]
        self.origin[path] = where

    def alias(self, path: tuple[str, ...], source: tuple[str, ...]) -> None:
        """Put the value at `source` also at `path`, its parts placed where they were written."""
        self.put(path, self.data[source[0]] if len(source) == 1 else None, self.place(source))
        for known, where in list(self.origin.items()):
            if known[: len(source)] == source and known != source:
                self.origin[(*path, *known[len(source) :])] = where


def _merge(defaults: dict[str, Any], vm: dict[str, Any], i: int) -> _Merged:
    here: PathKey = ("vms", i)
    merged = _Merged(here, {}, {})
    for key, value in defaults.items():
        merged.put((key,), value, ("defaults", key))
        if key in _MERGED_BY_KEY and isinstance(value, dict):
            merged.data[key] = dict(value)
            for sub in value:
                merged.origin[(key, sub)] = ("defaults", key, sub)
    for key, value in vm.items():
        base = merged.data.get(key)
        if key in _MERGED_BY_KEY and isinstance(base, dict) and isinstance(value, dict):
            for sub, sub_value in value.items():
                inner = base.get(sub)
                if (
                    (key, sub) == ("secrets", "git")
                    and isinstance(inner, dict)
                    and isinstance(sub_value, dict)
                ):
                    base[sub] = dict(inner)
                    for name in inner:
                        merged.origin.setdefault((key, sub, name), ("defaults", key, sub, name))
                    for name, cred in sub_value.items():
                        merged.put((key, sub, name), cred, (*here, key, sub, name))
                else:
                    merged.put((key, sub), sub_value, (*here, key, sub))
        else:
            merged.put((key,), value, (*here, key))
    return merged


def _complete(merged: _Merged) -> bool:
    """Derived defaults, placed where the value they derive from was written. False when the Arc
    section cannot be completed yet (its default cluster name, the host name, is invalid)."""
    data = merged.data
    name = data.get("name")
    if "hostname" not in data and isinstance(name, str):
        merged.put(("hostname",), name.lower(), merged.place(("name",)))
    if _joins(data):
        # Agents and joining servers stop after K3s: Arc and Flux run once, on the cluster's first server.
        for key in ("arc", "flux"):
            data.pop(key, None)
        return True
    arc = data.get("arc")
    if isinstance(arc, dict):
        arc = merged.data["arc"] = dict(arc)
        if "cluster_name" not in arc:
            if not _is_hostname(data.get("hostname")):
                # The host name is reported as itself; its Arc section is checked once it is valid.
                del merged.data["arc"]
                return False
            merged.put(("arc", "cluster_name"), data["hostname"], merged.place(("hostname",)))
        if data.get("tags") is not None:
            merged.alias(("arc", "tags"), ("tags",))
    return True


def _joins(data: Mapping[str, Any]) -> bool:
    """Whether merged VM data joins a cluster (an agent, or a server naming the server it joins)."""
    return data.get("role") == Role.AGENT.value or bool(data.get("server"))


def _is_hostname(value: Any) -> bool:
    # Only a valid host name becomes the default cluster name: an invalid one is reported once, as itself.
    try:
        _HOSTNAME.validate_python(value)
    except ValidationError:
        return False
    return True


_HOSTNAME: TypeAdapter[str] = TypeAdapter(HostName)


class _Checker:
    """Collects issues with the line of the key they are about."""

    def __init__(self, located: LocatedYaml) -> None:
        self.located = located
        self.issues: list[Issue] = []

    def add(self, path: PathKey, message: str) -> None:
        self.issues.append(Issue(self.located.file, self.located.line_of(path), dotted(path), message))


def server_url(network: NetworkSpec, hostname: str, domain: str | None) -> str:
    """The K3s supervisor URL other nodes join a server by: its static address, else its name."""
    if network.address is not None:
        host = str(network.address.ip)
    elif domain:
        host = f"{hostname}.{domain}"
    else:
        host = hostname
    return f"https://{host}:{K3S_API_PORT}"


_ARC_REQUIRED = ("resource_group", "location", "subscription_id", "tenant_id", "client_id")


def _entries(
    defaults: dict[str, Any], vms: list[Any], located: LocatedYaml, check: _Checker
) -> list[tuple[VmEntry, _Merged]]:
    """Each VM merged over `defaults` and validated; problems located where they were written.
    `defaults` is validated on its own too (its missing keys may come from each VM), so its problems
    are found even when no VM entry is valid."""
    if "name" in defaults:
        check.add(("defaults", "name"), "a VM's name is set in its own entry only")
    try:
        VmEntry.model_validate(defaults)
    except ValidationError as exc:
        check.issues += issues_from_validation(
            exc, VmEntry, defaults, located, place=lambda p: ("defaults", *p), partial=True, hints=_HINTS
        )
    out = []
    for i, vm in enumerate(vms):
        if not isinstance(vm, dict):
            continue  # reported by the file's own schema
        merged = _merge(defaults, vm, i)
        arc_complete = _complete(merged)
        if arc_complete and not _joins(merged.data) and merged.data.get("arc") is None:
            check.add(
                merged.at("arc"),
                f"a server needs arc.{', arc.'.join(_ARC_REQUIRED)} (here or in defaults.arc)",
            )
        try:
            out.append((VmEntry.model_validate(merged.data), merged))
        except ValidationError as exc:
            check.issues += issues_from_validation(
                exc, VmEntry, merged.data, located, place=merged.place, hints=_HINTS
            )
    return out


def _build_vms(
    entries: list[tuple[VmEntry, _Merged]], check: _Checker, allow_even: bool = False
) -> list[FleetVM]:
    by_name: dict[str, VmEntry] = {}
    where: dict[str, _Merged] = {}
    first_name: dict[str, PathKey] = {}
    first_host: dict[str, PathKey] = {}
    for vm, merged in entries:
        if vm.name in first_name:
            check.add(merged.at("name"), f"duplicate VM name (also {dotted(first_name[vm.name])})")
        if vm.hostname in first_host:
            check.add(merged.at("hostname"), f"duplicate hostname (also {dotted(first_host[vm.hostname])})")
        by_name.setdefault(vm.name, vm)
        where.setdefault(vm.name, merged)
        first_name.setdefault(vm.name, merged.here)
        first_host.setdefault(vm.hostname, merged.here)
    heads = [vm.name for vm, _ in entries if vm.role is Role.SERVER and vm.server is None]
    joins = {vm.name: _join_target(vm, merged, by_name, heads, check) for vm, merged in entries}
    # A VM whose join was refused is left out (its problem is reported); the rest form the clusters.
    placed = {vm.name for vm, _ in entries if joins[vm.name] is not None or vm.name in heads}
    cluster_init: set[str] = set()
    nodes = [_Node(vm.name, vm.role, joins[vm.name]) for vm, _ in entries if vm.name in placed]
    for cluster in topology.clusters(nodes):
        head = by_name[cluster.name]
        servers = len(cluster.servers)
        if servers > 1:
            cluster_init.add(cluster.name)
            if servers % 2 == 0 and not allow_even:
                check.add(
                    where[cluster.name].at("role"),
                    f"{cluster.describe()}: etcd needs an odd number of servers (a majority keeps "
                    f"quorum, so {servers} tolerate no more failures than {servers - 1}); add or remove a "
                    "server, or set allow_even_etcd_servers: true",
                )
        if len(cluster.servers) + len(cluster.agents) > 1:
            _check_tokens(cluster, head, by_name, where, check)
    # Once per cluster, shared by its members: per member it grew with the square of the cluster (a
    # 1,000-VM fleet loaded in 0.37 s CPU instead of 0.12 s).
    addresses: dict[str, list[str]] = {}
    for cluster in topology.clusters(nodes):
        members = (*cluster.servers, *cluster.agents)
        shared = _cluster_addresses([by_name[n] for n in members])
        addresses.update(dict.fromkeys(members, shared))
    out = []
    for vm, merged in entries:
        if vm.name not in placed:
            continue
        target = joins[vm.name]
        url = (
            None
            if target is None
            else server_url(by_name[target].network, by_name[target].hostname, by_name[target].domain)
        )
        built = _build_one(vm, merged, target, url, vm.name in cluster_init, addresses[vm.name], check)
        if built is not None:
            out.append(built)
    return out


def _cluster_addresses(members: list[VmEntry]) -> list[str]:
    """The node networks and static addresses of a cluster's VMs (NO_PROXY on each of its clones)."""
    static = [vm.network.address for vm in members if vm.network.address is not None]
    networks = [str(a.network) for a in static]
    return list(dict.fromkeys([*networks, *(str(a.ip) for a in static)]))


@dataclass(frozen=True)
class _Node:
    """A VM as builder.topology sees it."""

    name: str
    role: Role
    server: str | None


def _join_target(
    vm: VmEntry, merged: _Merged, by_name: dict[str, VmEntry], heads: list[str], check: _Checker
) -> str | None:
    """The VM this one joins (None: it starts a cluster); a problem is reported and None returned."""
    target = vm.server
    if target is None:
        if vm.role is Role.SERVER:
            return None
        if len(heads) == 1:
            return heads[0]
        check.add(merged.at("server"), f"an agent needs `server:` (the fleet has {len(heads)} clusters)")
        return None
    if target not in by_name:
        check.add(merged.at("server"), f"no VM named {target!r} in this fleet")
    elif by_name[target].role is not Role.SERVER:
        check.add(merged.at("server"), f"VM {target!r} is not a server")
    elif target == vm.name:
        check.add(merged.at("server"), "a server does not join itself")
    elif vm.role is Role.SERVER and by_name[target].server is not None:
        first = by_name[target].server
        check.add(
            merged.at("server"),
            f"a server joins the first server of its cluster ({target!r} joins {first!r}: name {first!r})",
        )
    else:
        return target
    return None


def _check_tokens(
    cluster: topology.Cluster,
    head: VmEntry,
    by_name: dict[str, VmEntry],
    where: dict[str, _Merged],
    check: _Checker,
) -> None:
    """Every node of a multi-node cluster carries the join token of the server that starts it."""
    token = (head.secrets or SecretRefs()).k3s_token
    if token is None:
        check.add(
            where[head.name].at("secrets"),
            f"{cluster.describe()} needs secrets.k3s_token, the join token every node shares "
            "(here or in defaults.secrets)",
        )
        return
    for name in (*cluster.servers[1:], *cluster.agents):
        refs = by_name[name].secrets or SecretRefs()
        if refs.k3s_token is None:
            check.add(
                where[name].at("secrets"), "a node that joins needs secrets.k3s_token (here or in defaults)"
            )
        elif refs.k3s_token != token:
            check.add(
                where[name].at("secrets", "k3s_token"),
                f"differs from the token of {head.name!r}, the server that starts its cluster",
            )


def _build_one(
    vm: VmEntry,
    merged: _Merged,
    target: str | None,
    server_url: str | None,
    cluster_init: bool,
    cluster_addresses: list[str],
    check: _Checker,
) -> FleetVM | None:
    before = len(check.issues)
    refs = vm.secrets or SecretRefs()
    onboards = vm.role is Role.SERVER and target is None
    if onboards and vm.arc is not None:
        secrets_at = merged.at("secrets")
        if vm.arc.auth is ArcAuth.SECRET and refs.sp_secret is None:
            check.add(secrets_at, "arc auth 'secret' needs secrets.sp_secret (here or in defaults.secrets)")
        if vm.arc.auth is ArcAuth.CERTIFICATE and refs.sp_certificate_pem is None:
            check.add(secrets_at, "arc auth 'certificate' needs secrets.sp_certificate_pem")
        for conf in vm.flux.configurations:
            cred = refs.git.get(conf.name)
            if cred is not None and not (cred.https_key or cred.ssh_private_key):
                check.add(merged.at("secrets", "git", conf.name), "needs https_key or ssh_private_key")
    if len(check.issues) > before:
        return None
    try:
        k3s = K3sConfig.model_validate(
            {
                **dict(vm.k3s),
                "role": vm.role,
                "server_url": server_url,
                "cluster_init": cluster_init,
                "cluster_addresses": cluster_addresses,
            }
        )
        config = OnboardingConfig(
            hostname=vm.hostname,
            domain=vm.domain,
            k3s=k3s,
            time=vm.time,
            dns=vm.dns,
            proxy=vm.proxy,
            arc=vm.arc if onboards else None,
            flux=vm.flux if onboards else FluxConfig(),
        )
    except ValidationError as exc:
        for err in exc.errors():
            check.add(merged.here, str(err["msg"]).removeprefix("Value error, "))
        return None
    return FleetVM(
        name=vm.name,
        hostname=vm.hostname,
        role=vm.role,
        server=target,
        network=vm.network,
        user=vm.user,
        ssh_authorized_keys=tuple(vm.ssh_authorized_keys),
        config=config,
        secret_refs=refs,
        secret_places=_secret_places(refs, merged, check.located),
    )


def _secret_places(
    refs: SecretRefs, merged: _Merged, located: LocatedYaml
) -> dict[str, tuple[int | None, str]]:
    keys: list[tuple[str, ...]] = [(k,) for k in ("sp_secret", "sp_certificate_pem", "k3s_token")]
    keys += [("git", name, k) for name in refs.git for k in ("https_key", "ssh_private_key")]
    places = {}
    for key in keys:
        where = merged.at("secrets", *key)
        places[".".join(key)] = (located.line_of(where), dotted(where))
    return places


def parse_fleet(located: LocatedYaml, path: Path) -> Fleet:
    """Validate parsed YAML into a Fleet; raise FleetError listing every problem."""
    if not isinstance(located.data, dict):
        raise FleetError(
            [Issue(located.file, located.line_of(()), "", "the fleet file must be a YAML mapping")]
        )
    check = _Checker(located)
    doc: FleetFile | None = None
    try:
        doc = FleetFile.model_validate(located.data)
    except ValidationError as exc:
        check.issues += issues_from_validation(exc, FleetFile, located.data, located, hints=_HINTS)
    defaults = located.data.get("defaults")
    vms = located.data.get("vms")
    entries = _entries(
        defaults if isinstance(defaults, dict) else {}, vms if isinstance(vms, list) else [], located, check
    )
    if check.issues or doc is None:
        # Schema problems first; cross checks run once every VM is valid.
        raise FleetError(check.issues)
    vms = _build_vms(entries, check, doc.allow_even_etcd_servers)
    if check.issues:
        raise FleetError(check.issues)
    return Fleet(doc.name or path.stem, path, doc.template, doc.vsphere, tuple(vms))


def load_fleet(path: Path | str) -> Fleet:
    """Load and validate a fleet file; raise FleetError listing every problem with file, line and path."""
    path = Path(path)
    return parse_fleet(read_located(path, FleetError), path)


# Secrets ----------------------------------------------------------------------------------------------


def _read_ref(ref: SecretRef, environ: Mapping[str, str], base: Path) -> str:
    """The secret's value; ValueError saying why not (never the value)."""
    if ref.env:
        value = environ.get(ref.env, "")
        if not value:
            raise ValueError(f"environment variable {ref.env} is not set")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise ValueError(f"environment variable {ref.env} is larger than {MAX_SECRET_BYTES // 1024} KiB")
        return value
    file = Path(ref.file or "").expanduser()
    if not file.is_absolute():
        file = base / file
    try:
        text = read_bounded(file, MAX_SECRET_BYTES).decode("utf-8").rstrip("\r\n")
    except BoundedReadError as exc:
        raise ValueError(f"file {ref.file}: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"file {ref.file}: not UTF-8 text") from None
    if not text:
        raise ValueError(f"file {ref.file} is empty")
    return text


def resolve_secrets(fleet: Fleet, environ: Mapping[str, str]) -> dict[str, OnboardingSecrets]:
    """Read every referenced secret; raise FleetError naming each unset variable or unreadable file."""
    base = fleet.path.parent
    # One issue per reference, at the line it was written (a reference in `defaults` once for all VMs).
    problems: dict[str, Issue] = {}
    out: dict[str, OnboardingSecrets] = {}

    for vm in fleet.vms:

        def value(ref: SecretRef | None, key: str, vm: FleetVM = vm) -> str | None:
            if ref is None:
                return None
            try:
                return _read_ref(ref, environ, base)
            except ValueError as exc:
                line, where = vm.secret_places.get(key, (None, f"vms.{vm.name}.secrets.{key}"))
                problems.setdefault(ref.describe(), Issue(str(fleet.path), line, where, str(exc)))
                return None

        refs = vm.secret_refs
        data: dict[str, Any] = {"k3s_token": value(refs.k3s_token, "k3s_token")}
        # Agents and joining servers stop after K3s: they get no Azure or Git material.
        if vm.config.onboards_cluster:
            data["sp_secret"] = value(refs.sp_secret, "sp_secret")
            data["sp_certificate_pem"] = value(refs.sp_certificate_pem, "sp_certificate_pem")
            data["git"] = {
                name: {
                    "https_user": g.https_user,
                    "https_key": value(g.https_key, f"git.{name}.https_key"),
                    "ssh_private_key": value(g.ssh_private_key, f"git.{name}.ssh_private_key"),
                    "known_hosts": g.known_hosts,
                }
                for name, g in refs.git.items()
            }
        out[vm.name] = OnboardingSecrets.model_validate(data)
    if problems:
        raise FleetError(list(problems.values()))
    return out


def secrets_json(secrets: OnboardingSecrets) -> str:
    """`guestinfo.arcbake.secrets` as JSON with the values revealed (only ever written to the VM)."""
    return json.dumps(secrets.revealed(), sort_keys=True)
