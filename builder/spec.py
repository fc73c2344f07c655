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
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from builder.template_names import check_placeholders, template_matcher
from firstboot import proxyenv, sizing
from firstboot.contract import (
    PATTERN_HINTS,
    Bool,
    Float,
    Int,
    K3sNetwork,
    PodResolvers,
    ProxyConfig,
    TimeSources,
)
from firstboot.contract import (
    Model as _Model,
)
from firstboot.located_yaml import Hints, InputError, LocatedYaml, read_located, validate_located

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

Sha256 = Annotated[str, Field(pattern=SHA256_RE, description="lowercase hex sha256 (64 characters)")]
SemVer = Annotated[str, Field(pattern=SEMVER_RE, description="exact version X.Y.Z")]
InventoryName = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_RE)]
# An OpenSSH public key line: type, base64, an optional comment of printable ASCII (kickstart's sshkey
# and cloud-init's user-data carry it; no line breaks).
SshPublicKey = Annotated[
    str,
    Field(
        max_length=16384,
        pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+"
        r"( [\x20-\x7e]*)?$",
    ),
]

_PATTERN_HINTS = {
    SHA256_RE: "must be a sha256: 64 lowercase hex characters",
    SEMVER_RE: "must be an exact version X.Y.Z",
    ENV_NAME_RE: "must be the NAME of an environment variable (upper case, digits, '_')",
    NAME_RE: "must be a vSphere inventory name (letters, digits, space, . _ ( ) -)",
}


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
        check_placeholders(value)
        if not {"date", "timestamp"} & set(re.findall(r"\{([a-z0-9]+)\}", value)):
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

    cpus: Annotated[Int, Field(ge=MIN_CPUS, le=128)] = MIN_CPUS
    memory_mib: Annotated[Int, Field(ge=MIN_MEMORY_MIB, le=1048576)] = MIN_MEMORY_MIB
    disk_gib: Annotated[
        Int,
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


class K3sSpec(K3sNetwork):
    """The pinned, air-gapped K3s baked into the template (installed, never started); its address ranges
    are the contract's (`K3sNetwork`), the defaults of every clone."""

    version: str = Field(description="exact release, e.g. v1.31.4+k3s1 (no latest, channels or ranges)")
    sha256: K3sSha256
    airgap_images_format: Literal["tar.zst", "tar.gz"] = "tar.zst"
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

    @property
    def url_version(self) -> str:
        """The version as it appears in GitHub release URLs (`+` escaped)."""
        return self.version.replace("+", "%2B")


class MakeStep(_Model):
    """chrony `makestep THRESHOLD LIMIT`: step the clock on the first updates instead of slewing."""

    threshold: Annotated[Float, Field(gt=0, le=3600)] = 1.0
    limit: Annotated[Int, Field(ge=-1, le=100)] = 3


class TimeSpec(TimeSources):
    """Time: chrony servers (Azure sign-in fails on skew) and VMware Tools time sync."""

    makestep: MakeStep = MakeStep()
    disable_vmware_tools_timesync: Bool = True
    timezone: Annotated[str, Field(pattern=r"^[A-Za-z0-9_+][A-Za-z0-9_+/-]*$")] = "UTC"


class DnsSpec(PodResolvers):
    """Resolvers for pods. The host's resolver is the clone's own network's; firstboot repairs it from the
    fleet's `dns` (README, "DNS: who decides the clone's resolver"), so the image bakes no host DNS fix."""


# Keys that left the image spec, with where their job went (a plain "unknown key" would leave a user of an
# older spec guessing).
_MOVED_KEYS = {
    ("dns", "upstream_servers"): "the DNS fix is applied at first boot, not baked: set dns.upstream_servers "
    "in the fleet file (README, DNS: who decides the clone's resolver)",
    ("dns", "apply_fix"): "the DNS fix is applied at first boot, not baked: set dns.apply_fix in the fleet "
    "file (README, DNS: who decides the clone's resolver)",
    ("dns", "search"): "search domains are the clone's network's: set network.search per VM in the fleet "
    "file (README, DNS: who decides the clone's resolver)",
}


class FirewallProfile(StrEnum):
    """K3s inbound rule sets (K3s docs, networking requirements)."""

    SINGLE_NODE = "single-node"
    MULTI_NODE = "multi-node"
    HA_ETCD = "ha-etcd"


class Port(_Model):
    """One extra inbound port or range."""

    port: Annotated[Int, Field(ge=1, le=65535)] | Annotated[str, Field(pattern=r"^\d{1,5}(-\d{1,5})?$")]
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


class HelmSpec(_Model):
    """The helm client baked for `az connectedk8s connect` (firstboot hands it over as HELM_CLIENT_PATH;
    without it connectedk8s downloads one at first boot)."""

    version: Annotated[str, Field(pattern=r"^v3\.\d+\.\d+$", description="exact helm release, e.g. v3.16.3")]
    sha256: Sha256 = Field(
        description="sha256 of helm-<version>-linux-amd64.tar.gz (get.helm.sh/<tarball>.sha256sum)"
    )


class AzureSpec(_Model):
    """The Azure CLI baked into the image, pinned, and the helm its connectedk8s extension uses."""

    cli_version: SemVer
    extensions: AzureExtensions
    helm: HelmSpec


class ContentLibrary(_Model):
    """Publish the template as an item of a content library."""

    name: InventoryName
    item: InventoryName | None = Field(
        default=None,
        description="item name; default: the template name + '-item' (Packer needs them different)",
    )
    ovf: Bool = False


class PublishSpec(_Model):
    """What happens to the finished VM: a template, or an item of a content library (not both)."""

    # Default: true without a content library, false with one.
    convert_to_template: Bool = True
    content_library: ContentLibrary | None = None
    keep: Annotated[Int, Field(ge=1, le=100)] = 3

    @model_validator(mode="before")
    @classmethod
    def _default_convert(cls, data: Any) -> Any:
        if isinstance(data, dict) and "convert_to_template" not in data and data.get("content_library"):
            return {**data, "convert_to_template": False}
        return data

    @model_validator(mode="after")
    def _somewhere(self) -> PublishSpec:
        if not self.convert_to_template and self.content_library is None:
            raise ValueError("publish nowhere: set convert_to_template or content_library")
        if self.convert_to_template and self.content_library is not None:
            # hashicorp/packer-plugin-vsphere builder/vsphere/{iso,clone}/config.go, the doc comment of
            # content_library_destination: "The import doesn't work if convert_to_template is set to true."
            raise ValueError(
                "content_library cannot be combined with convert_to_template: true (the vsphere plugin "
                "documents that the import does not work then): set convert_to_template: false"
            )
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
    run_image_tests: Bool = True
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
    proxy: ProxyConfig = ProxyConfig()
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
        if self.build.communicator == "ssh" and not self.build.ssh_public_key:
            how = (
                "the kickstart authorises it" if self.source.iso else "cloud-init user-data through guestinfo"
            )
            problems.append(f"a build with communicator ssh needs build.ssh_public_key ({how})")
        if self.build_access_by_guestinfo and self.publish.content_library is not None:
            # The library item is made by Packer, before builder can blank the build's guestinfo keys.
            problems.append(
                "a vsphere-clone build over SSH cannot publish to a content library: the build key's "
                "guestinfo user-data would be copied into the item (publish a template instead)"
            )
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
    def build_access_by_guestinfo(self) -> bool:
        """A vsphere-clone build over SSH: the key reaches the clone as guestinfo user-data
        (`builder.guestinfo.build_access`), blanked by builder before the VM becomes the template."""
        return self.source.clone is not None and self.build.communicator == "ssh"

    @property
    def trusted_sources(self) -> list[str]:
        """Sources of the trusted zone: the spec's list, or the pod and service CIDRs."""
        if self.firewall.trusted_sources is not None:
            return [str(s) for s in self.firewall.trusted_sources]
        return [str(self.k3s.cluster_cidr), str(self.k3s.service_cidr)]

    @property
    def proxy_environment(self) -> dict[str, str]:
        """The template's proxy environment (both spellings), derived like a clone's by `proxyenv`."""
        return proxyenv.proxy_environment(self.proxy, self.k3s)

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
        return template_matcher(self.vsphere.template_name, os=self.os.variant)


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
    if spec.build.communicator != "none":
        from builder.checksums import placeholder_paths  # checksums imports this module

        out += [
            f"{'.'.join(p)}: looks like a placeholder; `builder build` refuses it, `builder pin` fills in "
            "the release's sha256"
            for p in placeholder_paths(spec)
        ]
    return out


class SpecError(InputError):
    """The image spec is invalid (exit code 3); `issues` lists every problem with file, line and path."""


_HINTS = Hints(
    patterns={**PATTERN_HINTS, **_PATTERN_HINTS},
    moved=_MOVED_KEYS,
    credentials=(
        "unknown key; credentials never go into the spec (vSphere: VSPHERE_* environment; "
        "RHEL: rhsm.org_env / rhsm.activation_key_env name environment variables)"
    ),
)


def parse_spec(located: LocatedYaml) -> ImageSpec:
    """Validate already-parsed YAML; raise SpecError with every issue."""
    return validate_located(ImageSpec, located, SpecError, "the spec", _HINTS)


def load_spec(path: Path | str) -> ImageSpec:
    """Load and validate an image spec file; log warnings; raise SpecError listing every problem."""
    path = Path(path)
    spec = parse_spec(read_located(path, SpecError))
    for warning in spec_warnings(spec):
        LOG.warning("%s: %s", path, warning)
    return spec


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the image spec."""
    schema = ImageSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "arcbake image spec"
    return schema
