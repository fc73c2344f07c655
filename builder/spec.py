"""The image spec: what one golden template holds (pydantic v2 models, `extra="forbid"`), and its loader.

`load_spec(path)` parses the YAML keeping the line of every key, validates it, and raises
`SpecError` listing EVERY problem as `FILE:LINE: dotted.key.path: message`. The CLI maps that to
exit code 3. Defaults line up with firstboot's `OnboardingConfig` (CIDRs, cluster DNS, resolvers), so
a clone and its template agree unless the fleet file says otherwise.

No credential can be written here: vSphere credentials come from the environment of `builder`, and the
RHEL subscription is referenced by environment variable NAMES only (`rhsm.org_env`).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import string
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationError,
    field_validator,
    model_validator,
)

from builder.yamlsrc import InputError, Issue, LocatedYaml, dotted, read_located
from firstboot import sizing

LOG = logging.getLogger(__name__)

SPEC_SCHEMA_VERSION: Literal[1] = 1

# Seed minimum (rejected below) and recommendation (warned below) for a K3s server with Arc agents.
# One source with firstboot's resources check: a template below these makes clones that fail it.
MIN_CPUS, RECOMMENDED_CPUS = sizing.MIN_CPUS, sizing.RECOMMENDED_CPUS
MIN_MEMORY_MIB, RECOMMENDED_MEMORY_MIB = sizing.MIN_MEMORY_MIB, sizing.RECOMMENDED_MEMORY_MIB
MIN_DISK_GIB = sizing.MIN_DISK_GIB

K3S_VERSION_RE = r"^v\d+\.\d+\.\d+\+k3s\d+$"
SHA256_RE = r"^[0-9a-f]{64}$"
ENV_NAME_RE = r"^[A-Z_][A-Z0-9_]{0,127}$"
SEMVER_RE = r"^\d+\.\d+\.\d+$"
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9 ._()-]*$"
PLACEHOLDERS = {"date", "timestamp", "k3s", "os"}

Sha256 = Annotated[str, Field(pattern=SHA256_RE, description="lowercase hex sha256 (64 characters)")]
SemVer = Annotated[str, Field(pattern=SEMVER_RE, description="exact version X.Y.Z")]
InventoryName = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_RE)]
# The key is written inside double quotes of the kickstart's sshkey command: no quotes or backslashes.
SshPublicKey = Annotated[
    str, Field(pattern=r'^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( [^"\\\n]*)?$')
]
HostOrIp = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")]

# Keys that people paste into specs by habit; they get a pointed message instead of "unknown key".
_CREDENTIAL_KEYS = {
    "password",
    "passwd",
    "user",
    "username",
    "server",
    "token",
    "secret",
    "activation_key",
    "org",
    "organization",
    "org_id",
    "ssh_password",
    "client_secret",
}


_PATTERN_HINTS = {
    SHA256_RE: "must be a sha256: 64 lowercase hex characters",
    SEMVER_RE: "must be an exact version X.Y.Z",
    ENV_NAME_RE: "must be the NAME of an environment variable (upper case, digits, '_')",
    NAME_RE: "must be a vSphere inventory name (letters, digits, space, . _ ( ) -)",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distro(StrEnum):
    """The OS family of the image."""

    ROCKY = "rocky"
    RHEL = "rhel"


class OsSpec(_Model):
    """Which OS the template runs."""

    distro: Distro = Field(description="rocky or rhel")
    major: Literal[8, 9] = Field(description="major release: 8 or 9")

    @property
    def variant(self) -> str:
        """`rocky9`, `rhel8`, ..."""
        return f"{self.distro.value}{self.major}"

    @property
    def ks_version(self) -> str:
        """pykickstart grammar name for ksvalidator (`RHEL8`, `RHEL9`)."""
        return f"RHEL{self.major}"


class IsoSource(_Model):
    """Install from an ISO with vsphere-iso: a datastore path or a URL with a checksum."""

    datastore_path: Annotated[str, Field(pattern=r"^\[[^\]]+\] \S.*\.iso$")] | None = Field(
        default=None, description='"[datastore] path/to/file.iso"'
    )
    url: Annotated[str, Field(pattern=r"^https?://\S+\.iso$")] | None = None
    checksum: Annotated[str, Field(pattern=r"^(sha256:[0-9a-f]{64}|file:https?://\S+)$")] | None = Field(
        default=None, description="sha256:HEX or file:URL of a CHECKSUM file; required with url"
    )

    @model_validator(mode="after")
    def _one_location(self) -> IsoSource:
        if (self.datastore_path is None) == (self.url is None):
            raise ValueError("set exactly one of datastore_path or url")
        if self.url is not None and self.checksum is None:
            raise ValueError("an ISO url needs a checksum (sha256:HEX or file:URL)")
        return self


class CloneSource(_Model):
    """Start from an existing VM or template with vsphere-clone."""

    template: InventoryName = Field(description="name of the base VM or template to clone")


class SourceSpec(_Model):
    """Exactly one of `iso` (vsphere-iso) or `clone` (vsphere-clone)."""

    iso: IsoSource | None = None
    clone: CloneSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        if (self.iso is None) == (self.clone is None):
            raise ValueError("set exactly one of source.iso or source.clone")
        return self


class VsphereSpec(_Model):
    """Where the build VM and the template live. Never credentials (they come from VSPHERE_* env)."""

    datacenter: InventoryName
    cluster: InventoryName | None = None
    host: InventoryName | None = None
    resource_pool: InventoryName | None = None
    datastore: InventoryName
    network: InventoryName
    folder: Annotated[str, Field(max_length=400, pattern=r"^[A-Za-z0-9 ._()/-]*$")] = ""
    template_name: Annotated[str, Field(min_length=3, max_length=80)] = Field(
        description="name pattern; placeholders {date} {timestamp} {k3s} {os}; one of {date}/{timestamp} "
        "is required so every build gets a new name"
    )

    @field_validator("template_name")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad placeholder syntax: {exc}") from None
        unknown = fields - PLACEHOLDERS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; allowed: {{date}} {{timestamp}} {{k3s}} {{os}}"
            )
        if not fields & {"date", "timestamp"}:
            raise ValueError("needs a {date} or {timestamp} suffix so old templates can be kept and pruned")
        literal = re.sub(r"\{[a-z0-9]+\}", "", value)
        if not re.fullmatch(r"[A-Za-z0-9._-]*", literal):
            raise ValueError("only letters, digits, '.', '_' and '-' besides the placeholders")
        return value

    @model_validator(mode="after")
    def _placement(self) -> VsphereSpec:
        if (self.cluster is None) == (self.host is None):
            raise ValueError("set exactly one of cluster or host")
        return self


class Firmware(StrEnum):
    """VM firmware; EFI unless a base template needs BIOS."""

    EFI = "efi"
    BIOS = "bios"


class HardwareSpec(_Model):
    """Build VM hardware, inherited by the template and its clones."""

    cpus: Annotated[int, Field(ge=MIN_CPUS, le=128)] = MIN_CPUS
    memory_mib: Annotated[int, Field(ge=MIN_MEMORY_MIB, le=1048576)] = MIN_MEMORY_MIB
    disk_gib: Annotated[
        int,
        Field(
            le=16384,
            json_schema_extra={"minimum": MIN_DISK_GIB},
            description=f"at least {MIN_DISK_GIB}: firstboot needs {sizing.MIN_FREE_DISK_GIB} GiB free under "
            f"/var/lib/rancher and the image takes up to {sizing.IMAGE_FOOTPRINT_GIB} GiB",
        ),
    ] = sizing.DEFAULT_DISK_GIB
    firmware: Firmware = Firmware.EFI

    @field_validator("disk_gib")
    @classmethod
    def _clones_pass_firstboot(cls, value: int) -> int:
        if value < MIN_DISK_GIB:
            raise ValueError(
                f"{value} GiB leaves a clone less than the {sizing.MIN_FREE_DISK_GIB} GiB free under "
                f"/var/lib/rancher that firstboot's resources check needs (the image takes up to "
                f"{sizing.IMAGE_FOOTPRINT_GIB} GiB): give at least {MIN_DISK_GIB}"
            )
        return value


class K3sSha256(_Model):
    """sha256 of every K3s artifact the build downloads (from the release's sha256sum-amd64.txt)."""

    binary: Sha256
    airgap_images: Sha256
    install_script: Sha256


K3sComponent = Literal["traefik", "servicelb", "local-storage", "metrics-server"]


class K3sSpec(_Model):
    """The pinned, air-gapped K3s baked into the template (installed, never started)."""

    version: str = Field(description="exact release, e.g. v1.31.4+k3s1 (no latest, channels or ranges)")
    sha256: K3sSha256
    airgap_images_format: Literal["tar.zst", "tar.gz"] = "tar.zst"
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.43.0.0/16")
    cluster_dns: ipaddress.IPv4Address = ipaddress.IPv4Address("10.43.0.10")
    disable: list[K3sComponent] = Field(default_factory=list)
    selinux: Literal[True] = Field(default=True, description="always true: K3s runs with SELinux enforcing")
    selinux_rpm_channel: Literal["stable", "latest", "testing"] = "stable"

    @field_validator("version")
    @classmethod
    def _exact(cls, value: str) -> str:
        if not re.fullmatch(K3S_VERSION_RE, value):
            raise ValueError(
                f"{value!r} is not an exact K3s release like v1.31.4+k3s1 (latest, channels and ranges are "
                "rejected)"
            )
        return value

    @field_validator("disable")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("duplicate entries")
        return value

    @model_validator(mode="after")
    def _cidrs(self) -> K3sSpec:
        if self.cluster_dns not in self.service_cidr:
            raise ValueError(f"cluster_dns {self.cluster_dns} is outside service_cidr {self.service_cidr}")
        if self.cluster_cidr.overlaps(self.service_cidr):
            raise ValueError(f"cluster_cidr {self.cluster_cidr} overlaps service_cidr {self.service_cidr}")
        if self.cluster_dns in (self.service_cidr.network_address, self.service_cidr.broadcast_address):
            raise ValueError("cluster_dns must be a host address of service_cidr")
        return self

    @property
    def url_version(self) -> str:
        """The version as it appears in GitHub release URLs (`+` escaped)."""
        return self.version.replace("+", "%2B")


class MakeStep(_Model):
    """chrony `makestep THRESHOLD LIMIT`: step the clock on the first updates instead of slewing."""

    threshold: Annotated[float, Field(gt=0, le=3600)] = 1.0
    limit: Annotated[int, Field(ge=-1, le=100)] = 3


class TimeSpec(_Model):
    """Time: chrony servers (Azure sign-in fails on skew) and VMware Tools time sync."""

    ntp_servers: Annotated[list[HostOrIp], Field(min_length=1)]
    makestep: MakeStep = MakeStep()
    disable_vmware_tools_timesync: bool = True
    timezone: Annotated[str, Field(pattern=r"^[A-Za-z0-9_+/-]+$")] = "UTC"


def _default_resolvers() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.IPv4Address("1.1.1.1"), ipaddress.IPv4Address("1.0.0.1")]


class DnsSpec(_Model):
    """Resolvers for the host and for pods, and the fix for VM DNS forwarding."""

    upstream_servers: Annotated[list[IPvAnyAddress], Field(min_length=1, max_length=3)] = Field(
        default_factory=_default_resolvers
    )
    pod_upstream_servers: Annotated[list[IPvAnyAddress], Field(min_length=1, max_length=3)] = Field(
        default_factory=_default_resolvers
    )
    search: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")]] = Field(default_factory=list)
    apply_fix: bool = True


class FirewallProfile(StrEnum):
    """K3s inbound rule sets (K3s docs, networking requirements)."""

    SINGLE_NODE = "single-node"
    MULTI_NODE = "multi-node"
    HA_ETCD = "ha-etcd"


class Port(_Model):
    """One extra inbound port or range."""

    port: Annotated[str, Field(pattern=r"^\d{1,5}(-\d{1,5})?$")] | Annotated[int, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"] = "tcp"

    @field_validator("port")
    @classmethod
    def _range(cls, value: str | int) -> str | int:
        if isinstance(value, str):
            bounds = [int(p) for p in value.split("-")]
            if not all(1 <= b <= 65535 for b in bounds) or bounds != sorted(bounds):
                raise ValueError("ports are 1-65535 and a range goes low-high")
        return value


class FirewallSpec(_Model):
    """firewalld: the public zone from the K3s port table plus a trusted zone for cluster traffic."""

    profile: FirewallProfile = FirewallProfile.SINGLE_NODE
    extra_ports: list[Port] = Field(default_factory=list)
    # Default: the pod and service CIDRs of k3s (filled in by ImageSpec).
    trusted_sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None


_PROXY_URL = r"^https?://[A-Za-z0-9.:\[\]-]+(:\d+)?/?$"


class ProxySpec(_Model):
    """Outbound proxy for the build, the system and K3s; no_proxy is completed with cluster ranges."""

    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.*/:\[\]-]+$")]] = Field(default_factory=list)
    ca_bundle_pem: str | None = Field(
        default=None, description="PEM certificate(s) of a TLS-intercepting proxy"
    )

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "@" in value:
            raise ValueError("proxy credentials may not be written in the spec (user:password@ in the URL)")
        if not re.fullmatch(_PROXY_URL, value):
            raise ValueError("must be http(s)://host[:port]")
        return value

    @field_validator("ca_bundle_pem")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None and "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        if value is not None and "PRIVATE KEY" in value:
            raise ValueError("holds a private key; only certificates belong here")
        return value

    @property
    def enabled(self) -> bool:
        """True when any proxy is configured."""
        return bool(self.http_proxy or self.https_proxy)


class RhsmSpec(_Model):
    """RHEL subscription, by environment variable NAMES: the values never enter the spec or build dir."""

    org_env: str = Field(default="RHSM_ORG", description="NAME of the env var holding the organisation ID")
    activation_key_env: str = Field(
        default="RHSM_ACTIVATION_KEY", description="NAME of the env var holding the key"
    )

    @field_validator("org_env", "activation_key_env")
    @classmethod
    def _name_not_value(cls, value: str) -> str:
        if not re.fullmatch(ENV_NAME_RE, value):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. RHSM_ORG: upper case, digits, '_'), "
                "never the secret value itself"
            )
        return value


class AzureExtensions(_Model):
    """Pinned az CLI extension versions."""

    connectedk8s: SemVer
    k8s_extension: SemVer
    k8s_configuration: SemVer


class AzureSpec(_Model):
    """The Azure CLI baked into the image, pinned."""

    cli_version: SemVer
    extensions: AzureExtensions


class ContentLibrary(_Model):
    """Publish the template as an item of a content library."""

    name: InventoryName
    item: InventoryName | None = Field(
        default=None,
        description="item name; default: the template name + '-item' (Packer needs them different)",
    )
    ovf: bool = False


class PublishSpec(_Model):
    """What happens to the finished VM."""

    convert_to_template: bool = True
    content_library: ContentLibrary | None = None
    keep: Annotated[int, Field(ge=1, le=100)] = 3

    @model_validator(mode="after")
    def _somewhere(self) -> PublishSpec:
        if not self.convert_to_template and self.content_library is None:
            raise ValueError("publish nowhere: set convert_to_template or content_library")
        return self


class BuildSpec(_Model):
    """How Packer reaches the build VM."""

    communicator: Literal["ssh", "none"] = "ssh"
    ssh_username: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "arcbake"
    ssh_public_key: SshPublicKey | None = Field(
        default=None, description="public key the kickstart authorises for ssh_username (iso source)"
    )
    ssh_private_key_file_env: Annotated[str, Field(pattern=ENV_NAME_RE)] = Field(
        default="ARCBAKE_SSH_KEY_FILE", description="NAME of the env var holding the PATH of the private key"
    )
    run_image_tests: bool = True
    boot_wait: Annotated[str, Field(pattern=r"^\d+[smh]$")] = "10s"


class ImageSpec(_Model):
    """One golden template."""

    schema_version: Literal[1] = SPEC_SCHEMA_VERSION
    os: OsSpec
    source: SourceSpec
    vsphere: VsphereSpec
    hardware: HardwareSpec = HardwareSpec()
    k3s: K3sSpec
    time: TimeSpec
    dns: DnsSpec = DnsSpec()
    firewall: FirewallSpec = FirewallSpec()
    proxy: ProxySpec = ProxySpec()
    rhsm: RhsmSpec | None = None
    azure: AzureSpec
    publish: PublishSpec = PublishSpec()
    build: BuildSpec = BuildSpec()

    @model_validator(mode="after")
    def _cross_checks(self) -> ImageSpec:
        problems = []
        if self.os.distro is Distro.RHEL and self.rhsm is None:
            problems.append("rhel needs an rhsm section (names of the org and activation key env vars)")
        if self.os.distro is Distro.ROCKY and self.rhsm is not None:
            problems.append("rhsm applies to rhel only")
        if self.build.communicator == "ssh" and self.source.iso is not None and not self.build.ssh_public_key:
            problems.append("an iso build with communicator ssh needs build.ssh_public_key")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _trusted(self) -> ImageSpec:
        sources = self.firewall.trusted_sources
        if sources is not None:
            missing = [str(c) for c in (self.k3s.cluster_cidr, self.k3s.service_cidr) if c not in sources]
            if missing:
                raise ValueError(f"firewall.trusted_sources must include the k3s CIDRs {', '.join(missing)}")
        return self

    # Derived values the templates use -------------------------------------------------------------

    @property
    def trusted_sources(self) -> list[str]:
        """Sources of the trusted zone: the spec's list, or the pod and service CIDRs."""
        if self.firewall.trusted_sources is not None:
            return [str(s) for s in self.firewall.trusted_sources]
        return [str(self.k3s.cluster_cidr), str(self.k3s.service_cidr)]

    @property
    def no_proxy(self) -> list[str]:
        """The spec's no_proxy plus loopback and the cluster ranges and names K3s needs."""
        extra = [
            "localhost",
            "127.0.0.1",
            "::1",
            str(self.k3s.cluster_cidr),
            str(self.k3s.service_cidr),
            ".svc",
            ".cluster.local",
        ]
        out: list[str] = []
        for item in [*self.proxy.no_proxy, *extra]:
            if item not in out:
                out.append(item)
        return out

    def template_name(self, now: datetime | None = None) -> str:
        """The template name for a build at `now` (UTC)."""
        now = now or datetime.now(UTC)
        return self.vsphere.template_name.format(
            date=now.strftime("%Y%m%d"),
            timestamp=now.strftime("%Y%m%d%H%M"),
            k3s=re.sub(r"[^A-Za-z0-9]+", "-", self.k3s.version).strip("-"),
            os=self.os.variant,
        )

    def template_name_regex(self) -> re.Pattern[str]:
        """Matches every template this spec can produce (for pruning to `publish.keep`)."""
        parts = re.split(r"(\{[a-z0-9]+\})", self.vsphere.template_name)
        subst = {"{date}": r"\d{8}", "{timestamp}": r"\d{12}"}
        out = []
        for part in parts:
            if part in subst:
                out.append(subst[part])
            elif part == "{k3s}":
                out.append(r"[A-Za-z0-9-]+")
            elif part == "{os}":
                out.append(re.escape(self.os.variant))
            else:
                out.append(re.escape(part))
        return re.compile("^" + "".join(out) + "$")


def spec_warnings(spec: ImageSpec) -> list[str]:
    """Things that are allowed but unwise (below the recommended size)."""
    out = []
    if spec.hardware.cpus < RECOMMENDED_CPUS:
        out.append(f"hardware.cpus: {spec.hardware.cpus} is below the recommended {RECOMMENDED_CPUS}")
    if spec.hardware.memory_mib < RECOMMENDED_MEMORY_MIB:
        out.append(
            f"hardware.memory_mib: {spec.hardware.memory_mib} is below the recommended "
            f"{RECOMMENDED_MEMORY_MIB}"
        )
    return out


class SpecError(InputError):
    """The image spec is invalid (exit code 3); `issues` lists every problem with file, line and path."""


def _trim_loc(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # pydantic appends union member tags ("str", "int", "IPv4Address") after a scalar; keep the path only
    # as far as it walks through the input data, plus one missing key (for "Field required").
    out: list[str | int] = []
    current = data
    for part in loc:
        if isinstance(current, dict):
            out.append(part)
            if part not in current:
                break
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            out.append(part)
            current = current[part]
        else:
            break
    return tuple(out)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    # Unwrap Optional[...] / list[...] / Annotated[...] down to a model class, if there is one.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(parent: tuple[str | int, ...]) -> list[str]:
    """The keys the model at `parent` accepts (for "unknown key" messages)."""
    model: type[BaseModel] | None = ImageSpec
    for part in parent:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model is not None else []


def _message(err: Any, path: tuple[str | int, ...]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid"))
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else ""
        if key.lower() in _CREDENTIAL_KEYS or any(
            w in key.lower() for w in ("password", "secret", "token", "private_key", "credential")
        ):
            return (
                "unknown key; credentials never go into the spec (vSphere: VSPHERE_* environment; "
                "RHEL: rhsm.org_env / rhsm.activation_key_env name environment variables)"
            )
        allowed = _allowed_keys(path[:-1])
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_type":
        return (
            f"must be a string (quote it: YAML read {type(err.get('input')).__name__} {err.get('input')!r})"
        )
    if kind == "string_pattern_mismatch":
        pattern = str(err.get("ctx", {}).get("pattern", ""))
        if pattern in _PATTERN_HINTS:
            return _PATTERN_HINTS[pattern]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def issues_from_validation(exc: ValidationError, located: LocatedYaml) -> list[Issue]:
    """Turn pydantic errors into located issues: one line per key path (union alternatives joined)."""
    groups: dict[tuple[str | int, ...], list[str]] = {}
    for err in exc.errors():
        path = _trim_loc(located.data, tuple(err["loc"]))
        message = _message(err, path)
        messages = groups.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    return [Issue(located.file, located.line_of(p), dotted(p), "; ".join(m)) for p, m in groups.items()]


_M = TypeVar("_M", bound=BaseModel)


def validate_located(model: type[_M], located: LocatedYaml, error: type[InputError], what: str) -> _M:
    """Validate parsed YAML as `model`; raise `error` when it is not a mapping (`what must be a YAML
    mapping`) or with every pydantic issue located by file, line and key path."""
    if not isinstance(located.data, dict):
        raise error([Issue(located.file, located.line_of(()), "", f"{what} must be a YAML mapping")])
    try:
        return model.model_validate(located.data)
    except ValidationError as exc:
        raise error(issues_from_validation(exc, located)) from None


def read_input(path: Path, error: type[InputError]) -> LocatedYaml:
    """`read_located(path)`, its problems raised as `error` (SpecError, FleetError)."""
    try:
        return read_located(path)
    except InputError as exc:
        raise error(exc.issues) from None


def parse_spec(located: LocatedYaml) -> ImageSpec:
    """Validate already-parsed YAML; raise SpecError with every issue."""
    return validate_located(ImageSpec, located, SpecError, "the spec")


def load_spec(path: Path | str) -> ImageSpec:
    """Load and validate an image spec file; log warnings; raise SpecError listing every problem."""
    path = Path(path)
    located = read_input(path, SpecError)
    spec = parse_spec(located)
    for warning in spec_warnings(spec):
        LOG.warning("%s: %s", path, warning)
    return spec


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the image spec."""
    schema = ImageSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "arcbake image spec"
    return schema
