"""Fleet files: which VMs to clone from which template, and what each one receives in guestinfo.

A fleet file names the template, the vSphere placement of the clones, `defaults` and `vms`. A VM's key
replaces the same key of `defaults`, except `arc`, `tags` and `secrets`, which merge key by key (so a
fleet states its Azure subscription once and each server only its cluster name).

Validation reports every problem at once as `FILE:LINE: path: message` (exit 3), first the schema
(pydantic, through the image spec's error mapping), then the cross checks (unique names, agents have a
server to join, servers have a complete `arc` section and the secret its auth method needs).

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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from builder.spec import read_input, validate_located
from builder.yamlsrc import InputError, Issue, LocatedYaml
from firstboot.contract import (
    ArcAuth,
    ArcConfig,
    AzureName,
    DnsConfig,
    FluxConfig,
    FQDNOrHost,
    Guid,
    HostName,
    K3sConfig,
    OnboardingConfig,
    OnboardingSecrets,
    ProxyConfig,
    Role,
    TimeConfig,
)

FLEET_SCHEMA_VERSION: Literal[1] = 1
K3S_API_PORT = 6443
# What each placeholder of a template name pattern matches (the image spec's `template_name` pattern).
_PLACEHOLDER_RE = {
    "date": r"(?P<date>\d{8})",
    "timestamp": r"(?P<timestamp>\d{12})",
    "k3s": r"[A-Za-z0-9-]+",
    "os": r"[a-z]+\d+",
}

# vSphere allows almost anything in a VM name; we keep names that are safe in paths and messages.
VmName = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
InventoryName = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._()-]*$")
]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
LinuxUser = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
SshPublicKey = Annotated[str, Field(pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) \S+( .*)?$")]


class FleetError(InputError):
    """The fleet file (or a secret it references) is invalid; exit code 3."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret value comes from: an environment variable or a file. Never the value itself."""

    env: EnvName | None = None
    file: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference is {env: NAME} or {file: PATH}, exactly one")
        return self

    def describe(self) -> str:
        """`env:NAME` or `file:PATH`, for messages and the identity hash."""
        return f"env:{self.env}" if self.env else f"file:{self.file}"


class GitSecretRefs(_Model):
    """Credentials for one Flux configuration's repository."""

    https_user: str | None = None
    https_key: SecretRef | None = None
    ssh_private_key: SecretRef | None = None
    known_hosts: str | None = None


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

    dhcp: bool | None = None
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


class ArcSettings(_Model):
    """The Arc connected cluster of a server; every field may come from `defaults.arc`."""

    cluster_name: AzureName | None = None
    resource_group: AzureName | None = None
    location: Annotated[str, Field(pattern=r"^[a-z0-9]+$")] | None = None
    subscription_id: Guid | None = None
    tenant_id: Guid | None = None
    client_id: Guid | None = None
    auth: ArcAuth | None = None
    onboarding_timeout_seconds: Annotated[int, Field(ge=60, le=3600)] | None = None


class K3sSettings(_Model):
    """K3s settings of a clone besides its role (which is `role`/`server` on the VM)."""

    cluster_cidr: ipaddress.IPv4Network | None = None
    service_cidr: ipaddress.IPv4Network | None = None
    cluster_dns: ipaddress.IPv4Address | None = None
    node_labels: dict[str, str] = Field(default_factory=dict)
    ready_timeout_seconds: Annotated[int, Field(ge=10, le=3600)] | None = None


class VmSettings(_Model):
    """Keys a VM may set, and `defaults` may set for every VM."""

    hostname: HostName | None = None
    domain: FQDNOrHost | None = None
    role: Role | None = None
    server: VmName | None = Field(default=None, description="agents: name of the server VM to join")
    network: NetworkSpec | None = None
    user: LinuxUser | None = None
    ssh_authorized_keys: list[SshPublicKey] | None = None
    time: TimeConfig | None = None
    dns: DnsConfig | None = None
    proxy: ProxyConfig | None = None
    k3s: K3sSettings | None = None
    arc: ArcSettings | None = None
    tags: dict[str, str] | None = None
    flux: FluxConfig | None = None
    secrets: SecretRefs | None = None


class VmEntry(VmSettings):
    """One VM of the fleet."""

    name: VmName


class FleetPlacement(_Model):
    """Where the clones go; overrides of the template's own network and datastore."""

    datacenter: InventoryName
    cluster: InventoryName | None = None
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.:-]+$")] | None = None
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
    """A fleet file as written."""

    schema_version: Literal[1] = FLEET_SCHEMA_VERSION
    name: VmName | None = Field(default=None, description="fleet name; default: the file name")
    template: Annotated[
        str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._(){}-]*$")
    ] = Field(description="template name, or a pattern with {date} {timestamp} {k3s} {os}: the newest match")
    vsphere: FleetPlacement

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        unknown = set(re.findall(r"\{([^}]*)\}", value)) - set(_PLACEHOLDER_RE)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; allowed: {{date}} {{timestamp}} {{k3s}} {{os}}"
            )
        return value

    defaults: VmSettings = VmSettings()
    vms: Annotated[list[VmEntry], Field(min_length=1)]


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

    @property
    def mac(self) -> str:
        """The MAC of the clone's NIC (deploy sets it at clone time)."""
        return clone_mac(self.name)

    def metadata(self) -> dict[str, Any]:
        """cloud-init meta-data for the VMware datasource: instance-id, local-hostname, network v2."""
        body = {"local-hostname": self.hostname, "network": network_v2(self.network, self.mac)}
        digest = _digest({"md": body, "ud": self.userdata(), "cfg": self.config_json()})[:12]
        return {"instance-id": f"iid-arcbake-{self.name}-{digest}", **body}

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
                "metadata": self.metadata(),
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


def template_matcher(template: str) -> re.Pattern[str] | None:
    """A regex for a template name pattern with placeholders; None for an exact name."""
    if "{" not in template:
        return None
    parts = re.split(r"(\{[a-z0-9]+\})", template)
    return re.compile(
        "^" + "".join(_PLACEHOLDER_RE[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts) + "$"
    )


def newest_match(template: str, names: list[str]) -> str | None:
    """The newest name matching the pattern `template` (by its date/timestamp, then by name)."""
    matcher = template_matcher(template)
    if matcher is None:
        return template if template in names else None
    found = []
    for name in names:
        m = matcher.match(name)
        if m:
            stamp = (m.groupdict().get("timestamp") or "") + (m.groupdict().get("date") or "")
            found.append((stamp, name))
    return max(found)[1] if found else None


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# The name cloud-init gives the clone's NIC (`set-name`): what vmxnet3's first NIC is called on EL, so the
# name is the same on every clone whatever its hardware version.
NIC_NAME = "ens192"
# VMware's range for manually assigned MACs (00:50:56:00:00:00 - 00:50:56:3F:FF:FF).
_MANUAL_MAC_PREFIX, _MANUAL_MAC_BITS = "00:50:56", 22


def clone_mac(vm_name: str) -> str:
    """The MAC deploy gives a clone's first NIC: from the VM name, in VMware's manual range, so the network
    config written before the clone exists can bind the address to it (cloud-init's NetworkManager and
    sysconfig renderers match a NIC by MAC, not by a name glob)."""
    bits = int.from_bytes(hashlib.sha256(f"arcbake-nic:{vm_name}".encode()).digest()[:4], "big")
    low = bits & ((1 << _MANUAL_MAC_BITS) - 1)
    return f"{_MANUAL_MAC_PREFIX}:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"


def network_v2(net: NetworkSpec, mac: str) -> dict[str, Any]:
    """cloud-init network config version 2 for the clone's one NIC, matched by its MAC and named NIC_NAME.

    The default route is a `routes:` entry (`gateway4` is deprecated); `0.0.0.0/0` rather than `default`,
    which the renderers of EL 8's cloud-init do not parse. DNS servers and search domains go with the NIC
    (NetworkManager puts them in the clone's resolver unless the image's DNS fix owns /etc/resolv.conf:
    README, "Fleets: network").
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


def _merge(defaults: VmSettings, vm: VmEntry) -> dict[str, Any]:
    base = defaults.model_dump(exclude_unset=True)
    own = vm.model_dump(exclude_unset=True)
    merged = {**base, **own}
    # Merge only mappings: an explicit `arc: null` (or `secrets: null`) in a VM entry replaces the default.
    for key in ("arc", "tags"):
        if isinstance(base.get(key), dict) and isinstance(own.get(key), dict):
            merged[key] = {**base[key], **own[key]}
    if isinstance(base.get("secrets"), dict) and isinstance(own.get("secrets"), dict):
        merged["secrets"] = {**base["secrets"], **own["secrets"]}
        merged["secrets"]["git"] = {**base["secrets"].get("git", {}), **own["secrets"].get("git", {})}
    return merged


class _Checker:
    """Collects cross-check issues with the line of the key they are about."""

    def __init__(self, located: LocatedYaml) -> None:
        self.located = located
        self.issues: list[Issue] = []

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        dotted = ".".join(str(p) for p in path)
        self.issues.append(Issue(self.located.file, self.located.line_of(path), dotted, message))


def _server_url(server: dict[str, Any]) -> str:
    net: NetworkSpec = server["network"]
    if net.address is not None:
        host = str(net.address.ip)
    elif server.get("domain"):
        host = f"{server['hostname']}.{server['domain']}"
    else:
        host = server["hostname"]
    return f"https://{host}:{K3S_API_PORT}"


_ARC_REQUIRED = ("resource_group", "location", "subscription_id", "tenant_id", "client_id")


def _build_vms(doc: FleetFile, check: _Checker) -> list[FleetVM]:
    merged = [_merge(doc.defaults, vm) for vm in doc.vms]
    for m in merged:
        m.setdefault("hostname", m["name"].lower())
        m.setdefault("role", Role.SERVER)
        m.setdefault("network", NetworkSpec())
        m["network"] = (
            NetworkSpec.model_validate(m["network"]) if isinstance(m["network"], dict) else m["network"]
        )
    names: dict[str, int] = {}
    hostnames: dict[str, int] = {}
    for i, m in enumerate(merged):
        if m["name"] in names:
            check.add(("vms", i, "name"), f"duplicate VM name (also vms.{names[m['name']]})")
        names.setdefault(m["name"], i)
        if m["hostname"] in hostnames:
            check.add(("vms", i, "hostname"), f"duplicate hostname (also vms.{hostnames[m['hostname']]})")
        hostnames.setdefault(m["hostname"], i)
    servers = [m["name"] for m in merged if m["role"] == Role.SERVER]
    out: list[FleetVM] = []
    for i, m in enumerate(merged):
        here: tuple[str | int, ...] = ("vms", i)
        vm = _build_one(i, m, merged, names, servers, check)
        if vm is not None:
            out.append(vm)
        elif not check.issues:
            check.add(here, "invalid VM")
    return out


def _build_one(
    i: int,
    m: dict[str, Any],
    merged: list[dict[str, Any]],
    names: dict[str, int],
    servers: list[str],
    check: _Checker,
) -> FleetVM | None:
    here: tuple[str | int, ...] = ("vms", i)
    before = len(check.issues)
    role = Role(m["role"])
    server_name: str | None = None
    k3s: dict[str, Any] = {k: v for k, v in (m.get("k3s") or {}).items() if v is not None and v != {}}
    if m.get("k3s", {}).get("node_labels"):
        k3s["node_labels"] = m["k3s"]["node_labels"]
    k3s["role"] = role
    if role == Role.AGENT:
        server_name = m.get("server")
        if server_name is None:
            if len(servers) == 1:
                server_name = servers[0]
            else:
                check.add(
                    (*here, "server"), f"an agent needs `server:` (the fleet has {len(servers)} servers)"
                )
        elif server_name not in names:
            check.add((*here, "server"), f"no VM named {server_name!r} in this fleet")
            server_name = None
        elif merged[names[server_name]]["role"] != Role.SERVER:
            check.add((*here, "server"), f"VM {server_name!r} is not a server")
            server_name = None
        if server_name is not None:
            k3s["server_url"] = _server_url(merged[names[server_name]])
    elif m.get("server"):
        check.add((*here, "server"), "only an agent joins a server")
    refs = SecretRefs.model_validate(m.get("secrets") or {})
    if role == Role.AGENT and server_name is not None:
        server_refs = SecretRefs.model_validate(merged[names[server_name]].get("secrets") or {})
        if refs.k3s_token is None:
            check.add((*here, "secrets"), "an agent needs secrets.k3s_token (here or in defaults.secrets)")
        elif server_refs.k3s_token != refs.k3s_token:
            check.add(
                (*here, "secrets", "k3s_token"), f"differs from the token of its server {server_name!r}"
            )
    arc: ArcConfig | None = None
    if role == Role.SERVER:
        arc = _arc(here, m, refs, check)
    if m.get("time") is None:
        check.add(here, "time is required (time.ntp_servers here or in defaults)")
    flux = m.get("flux") or {}
    if role == Role.SERVER:
        for conf in flux.get("configurations", []):
            cred = refs.git.get(conf["name"])
            if cred is not None and not (cred.https_key or cred.ssh_private_key):
                check.add((*here, "secrets", "git", conf["name"]), "needs https_key or ssh_private_key")
    if len(check.issues) > before:
        return None
    try:
        config = OnboardingConfig(
            hostname=m["hostname"],
            domain=m.get("domain"),
            k3s=K3sConfig.model_validate(k3s),
            time=TimeConfig.model_validate(m["time"]),
            dns=DnsConfig.model_validate(m.get("dns") or {}),
            proxy=ProxyConfig.model_validate(m.get("proxy") or {}),
            arc=arc,
            flux=FluxConfig.model_validate(flux) if role == Role.SERVER else FluxConfig(),
        )
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            check.add((*here, *loc), str(err["msg"]).removeprefix("Value error, "))
        return None
    return FleetVM(
        name=m["name"],
        hostname=m["hostname"],
        role=role,
        server=server_name,
        network=m["network"],
        user=m.get("user") or "arcbake",
        ssh_authorized_keys=tuple(m.get("ssh_authorized_keys") or ()),
        config=config,
        secret_refs=refs,
    )


def _arc(
    here: tuple[str | int, ...], m: dict[str, Any], refs: SecretRefs, check: _Checker
) -> ArcConfig | None:
    arc = dict(m.get("arc") or {})
    missing = [k for k in _ARC_REQUIRED if not arc.get(k)]
    if missing:
        check.add((*here, "arc"), f"a server needs arc.{', arc.'.join(missing)} (here or in defaults.arc)")
        return None
    arc.setdefault("cluster_name", m["hostname"])
    arc = {k: v for k, v in arc.items() if v is not None}
    arc["tags"] = m.get("tags") or {}
    config = ArcConfig.model_validate(arc)
    if config.auth is ArcAuth.SECRET and refs.sp_secret is None:
        check.add(
            (*here, "secrets"), "arc auth 'secret' needs secrets.sp_secret (here or in defaults.secrets)"
        )
    if config.auth is ArcAuth.CERTIFICATE and refs.sp_certificate_pem is None:
        check.add((*here, "secrets"), "arc auth 'certificate' needs secrets.sp_certificate_pem")
    return config


def parse_fleet(located: LocatedYaml, path: Path) -> Fleet:
    """Validate parsed YAML into a Fleet; raise FleetError listing every problem."""
    doc = validate_located(FleetFile, located, FleetError, "the fleet file")
    check = _Checker(located)
    vms = _build_vms(doc, check)
    if check.issues:
        raise FleetError(check.issues)
    return Fleet(doc.name or path.stem, path, doc.template, doc.vsphere, tuple(vms))


def load_fleet(path: Path | str) -> Fleet:
    """Load and validate a fleet file; raise FleetError listing every problem with file, line and path."""
    path = Path(path)
    return parse_fleet(read_input(path, FleetError), path)


# Secrets ----------------------------------------------------------------------------------------------


def _read_ref(ref: SecretRef, environ: Mapping[str, str], base: Path) -> str | None:
    if ref.env:
        return environ.get(ref.env) or None
    file = Path(ref.file or "").expanduser()
    if not file.is_absolute():
        file = base / file
    try:
        return file.read_text(encoding="utf-8").rstrip("\r\n") or None
    except (OSError, UnicodeDecodeError):
        return None


def resolve_secrets(fleet: Fleet, environ: Mapping[str, str]) -> dict[str, OnboardingSecrets]:
    """Read every referenced secret; raise FleetError naming each unset variable or unreadable file."""
    base = fleet.path.parent
    problems: dict[str, str] = {}
    out: dict[str, OnboardingSecrets] = {}

    def value(ref: SecretRef | None, where: str) -> str | None:
        if ref is None:
            return None
        got = _read_ref(ref, environ, base)
        if got is None:
            what = f"environment variable {ref.env} is not set" if ref.env else f"cannot read file {ref.file}"
            problems.setdefault(ref.describe(), f"{where}: {what}")
        return got

    for vm in fleet.vms:
        refs = vm.secret_refs
        where = f"vms[{vm.name}].secrets"
        data: dict[str, Any] = {"k3s_token": value(refs.k3s_token, f"{where}.k3s_token")}
        # Agents stop after K3s: they get no Azure or Git material.
        if vm.role == Role.SERVER:
            data["sp_secret"] = value(refs.sp_secret, f"{where}.sp_secret")
            data["sp_certificate_pem"] = value(refs.sp_certificate_pem, f"{where}.sp_certificate_pem")
            data["git"] = {
                name: {
                    "https_user": g.https_user,
                    "https_key": value(g.https_key, f"{where}.git.{name}.https_key"),
                    "ssh_private_key": value(g.ssh_private_key, f"{where}.git.{name}.ssh_private_key"),
                    "known_hosts": g.known_hosts,
                }
                for name, g in refs.git.items()
            }
        out[vm.name] = OnboardingSecrets.model_validate(data)
    if problems:
        raise FleetError([Issue(str(fleet.path), None, "secrets", msg) for msg in problems.values()])
    return out


def secrets_json(secrets: OnboardingSecrets) -> str:
    """`guestinfo.arcbake.secrets` as JSON with the values revealed (only ever written to the VM)."""
    return json.dumps(secrets.revealed(), sort_keys=True)
