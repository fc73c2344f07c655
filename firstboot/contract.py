"""The contract between `builder deploy` and firstboot: guestinfo keys and the models of their payloads.

One model, here, imported by builder (ARCHITECTURE.md: builder may import firstboot's contract models).
`OnboardingConfig` never holds a secret; `OnboardingSecrets` travels in its own key and is redacted in the
VM once read.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

KEY_METADATA = "guestinfo.metadata"
KEY_USERDATA = "guestinfo.userdata"
KEY_CONFIG = "guestinfo.arcbake.config"
KEY_SECRETS = "guestinfo.arcbake.secrets"
KEY_STATUS = "guestinfo.arcbake.status"
# `builder rollout` asks a server to delete Nodes before their replacements join (`ID:name,name`, see
# NodesDeleteRequest): K3s refuses a node name it holds another node's password for (firstboot/rotate.py).
KEY_NODES_DELETE = "guestinfo.arcbake.nodes-delete"
ENCODING_SUFFIX = ".encoding"
# What a secrets key holds once firstboot has read it.
REDACTED_VALUE = "---"

CONFIG_SCHEMA_VERSION: Literal[1] = 1

# Friendlier words for a pattern than the regex itself, for located validation messages (by pattern).
PATTERN_HINTS: dict[str, str] = {}


def matching(pattern: str, hint: str, **limits: Any) -> Any:
    """`Field(pattern=...)` that also records what the pattern means, for error messages."""
    PATTERN_HINTS[pattern] = hint
    return Field(pattern=pattern, **limits)


# Value patterns. Each excludes what the files and argv the value reaches would interpret (quotes,
# `$`, backslashes, whitespace, control characters, a leading `-` that a parser reads as an option);
# `firstboot/quoting.py` still quotes every value for its target format.
HostName = Annotated[
    str,
    matching(
        r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        "must be a host name: lower-case letters, digits and '-' (not first or last), at most 63",
        min_length=1,
        max_length=63,
    ),
]
FQDNOrHost = Annotated[
    str,
    matching(
        r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$",
        "must be a DNS name: letters, digits, '.' and '-', starting with a letter or digit",
        min_length=1,
        max_length=253,
    ),
]
# A host name, IPv4 or IPv6 address (chrony `server`, kickstart `timesource --ntp-server=`).
NtpServer = Annotated[
    str,
    matching(
        r"^[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}$",
        "must be a host name or IP address (letters, digits, '.', ':', '-'; not starting with '-')",
        min_length=1,
        max_length=253,
    ),
]
AzureName = Annotated[
    str, Field(min_length=1, max_length=90, pattern=r"^[A-Za-z0-9_(][A-Za-z0-9._()-]{0,89}$")
]
Guid = Annotated[
    str, Field(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
]
KubeName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
# Kubernetes label key (optional DNS-subdomain prefix + name) and value (k8s.io/apimachinery validation).
LabelKey = Annotated[
    str,
    Field(
        max_length=317,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
    ),
]
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]
# Azure tags (learn.microsoft.com "Use tags to organize your Azure resources": names up to 512 characters
# without < > % & \ ? /, values up to 256); also no leading `-` (az reads `--tags -x=y` as an option), no
# `=` in a name (`--tags k=v` splits at the first `=`), no control characters, at most 50 tags.
TagKey = Annotated[
    str,
    matching(
        r"^[A-Za-z0-9_.][A-Za-z0-9 _.:+@-]*$",
        "must be an Azure tag name: letters, digits, space and _ . : + @ -, not starting with '-'",
        min_length=1,
        max_length=512,
    ),
]
TagValue = Annotated[
    str,
    matching(
        r"^[^\x00-\x1f\x7f<>%&\\?]*$",
        "must be an Azure tag value: no control characters or < > % & \\ ?",
        max_length=256,
    ),
]
ArcTags = Annotated[dict[TagKey, TagValue], Field(max_length=50)]
# YAML reads `true` and `1.0` for numbers people meant otherwise: no bool-to-int or string coercion.
Int = StrictInt
Float = StrictFloat
Bool = StrictBool
# An http(s) proxy: scheme, host, optional port. No credentials (they would land in world-readable files)
# and nothing a shell, systemd or a Go URL parser would interpret.
PROXY_URL_RE = r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?/?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?/?$"
# One NO_PROXY entry: a host, `.domain`, `*.domain`, an address, a CIDR, optionally `:port`.
NoProxyEntry = Annotated[
    str,
    matching(
        r"^[A-Za-z0-9.*:\[][A-Za-z0-9.*/:\[\]-]*$",
        "must be a host, .domain, *.domain, address or CIDR (letters, digits, . * / : [ ] -)",
        min_length=1,
        max_length=253,
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The base of every input model, builder's image spec and fleet file too: unknown keys refused, frozen.
Model = _Model


class Role(StrEnum):
    """A clone's K3s role: the first node is the server, the others join it as agents."""

    SERVER = "server"
    AGENT = "agent"


class K3sNetwork(_Model):
    """The cluster's address ranges, baked into the template and given to each clone."""

    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.43.0.0/16")
    cluster_dns: ipaddress.IPv4Address = ipaddress.IPv4Address("10.43.0.10")

    @model_validator(mode="after")
    def _cidrs(self) -> K3sNetwork:
        if self.cluster_dns not in self.service_cidr:
            raise ValueError(f"cluster_dns {self.cluster_dns} is outside service_cidr {self.service_cidr}")
        if self.cluster_cidr.overlaps(self.service_cidr):
            raise ValueError(f"cluster_cidr {self.cluster_cidr} overlaps service_cidr {self.service_cidr}")
        if self.cluster_dns in (self.service_cidr.network_address, self.service_cidr.broadcast_address):
            raise ValueError("cluster_dns must be a host address of service_cidr")
        return self


class K3sSettings(K3sNetwork):
    """What a fleet file sets under `k3s:` (the role and server come from the VM's `role`/`server`)."""

    node_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    ready_timeout_seconds: Annotated[Int, Field(ge=10, le=3600)] = 300


class K3sConfig(K3sSettings):
    """How this clone runs K3s."""

    role: Role = Role.SERVER
    # Agents and joining servers join https://<server>:6443; the cluster's token comes from secrets.
    server_url: Annotated[str, Field(pattern=r"^https://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?$")] | None = None
    # The first server of a cluster with several servers: it starts embedded etcd (`cluster-init`) and
    # the others join it. Set by builder from the fleet's topology, never by hand.
    cluster_init: Bool = False
    # The cluster's node network(s) and its nodes' static addresses, set by builder from the fleet (never
    # by hand): NO_PROXY carries them (firstboot.proxyenv), so node-to-node and node-to-server traffic
    # (https://<server>:6443, kubelets, etcd) never goes through the proxy.
    cluster_addresses: Annotated[list[NoProxyEntry], Field(max_length=256)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _agent_joins(self) -> K3sConfig:
        if self.role is Role.AGENT and not self.server_url:
            raise ValueError("an agent needs k3s.server_url")
        if self.cluster_init and (self.role is Role.AGENT or self.server_url):
            raise ValueError("cluster_init is for the server that starts the cluster (no server_url)")
        return self


class TimeSources(_Model):
    """NTP servers: chrony's in the template, the probe's on each clone."""

    ntp_servers: Annotated[list[NtpServer], Field(min_length=1)]


class TimeConfig(TimeSources):
    """Time sources and the tolerated offset (Azure sign-in fails on clock skew)."""

    # Port for the NTP probe; 123 in the field, a loopback port in tests.
    ntp_port: Annotated[Int, Field(ge=1, le=65535)] = 123
    max_offset_seconds: Annotated[Float, Field(gt=0, le=3600)] = 5.0
    sync_timeout_seconds: Annotated[Int, Field(ge=1, le=900)] = 60


IpAddress = IPvAnyAddress


def _default_resolvers() -> list[IpAddress]:
    return [ipaddress.IPv4Address("1.1.1.1"), ipaddress.IPv4Address("1.0.0.1")]


class PodResolvers(_Model):
    """The pods' resolvers (CoreDNS forwards there; at most 3: the resolver reads no more). The image bakes
    them into /etc/rancher/k3s/resolv.conf and the dns step rewrites that file on each clone."""

    pod_upstream_servers: Annotated[list[IpAddress], Field(min_length=1, max_length=3)] = Field(
        default_factory=_default_resolvers
    )


class DnsResolvers(PodResolvers):
    """A clone's resolvers: the upstreams of the DNS fix firstboot applies when the clone's own resolver
    fails (README, "DNS: who decides the clone's resolver"). Clone-only: the image bakes no host DNS fix."""

    upstream_servers: Annotated[list[IpAddress], Field(min_length=1, max_length=3)] = Field(
        default_factory=_default_resolvers
    )
    apply_fix: Bool = True


class DnsConfig(DnsResolvers):
    """A clone's resolvers and how firstboot probes them."""

    # Port for direct upstream queries; 53 in the field, a loopback port in tests.
    port: Annotated[Int, Field(ge=1, le=65535)] = 53
    timeout_seconds: Annotated[Float, Field(gt=0, le=30)] = 2.0


class ProxyConfig(_Model):
    """Outbound proxy for the build, the system and K3s; `proxyenv` derives NO_PROXY with cluster ranges."""

    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: Annotated[list[NoProxyEntry], Field(max_length=100)] = Field(default_factory=list)
    # PEM of an extra CA (a TLS-intercepting proxy); public material, not a secret.
    ca_bundle_pem: Annotated[str, Field(max_length=65536)] | None = Field(
        default=None, description="PEM certificate(s) of a TLS-intercepting proxy"
    )

    @field_validator("http_proxy", "https_proxy")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "@" in value:
            raise ValueError("proxy credentials may not be written here (user:password@ in the URL)")
        if not re.fullmatch(PROXY_URL_RE, value):
            raise ValueError("must be http(s)://host[:port]")
        return value

    @field_validator("ca_bundle_pem")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "-----BEGIN CERTIFICATE-----" not in value:
            raise ValueError("must hold PEM certificates (-----BEGIN CERTIFICATE-----)")
        if "PRIVATE KEY" in value:
            raise ValueError("holds a private key; only certificates belong here")
        if re.search(r"[^\x20-\x7e\t\r\n]", value):
            raise ValueError("PEM text is printable ASCII")
        return value

    @property
    def enabled(self) -> bool:
        """True when any proxy is configured."""
        return bool(self.http_proxy or self.https_proxy)


class ArcAuth(StrEnum):
    """How the service principal signs in; the material itself is in secrets."""

    SECRET = "secret"  # noqa: S105 - the name of an auth method, not a password
    CERTIFICATE = "certificate"


class ArcFeatures(_Model):
    """Arc features the cluster is meant to use. Their endpoints (firstboot.endpoints, after Microsoft's
    network requirements) are then required by the preflight; otherwise unreachable ones are warnings."""

    cluster_connect: Bool = False
    azure_rbac: Bool = False


class ArcConfig(_Model):
    """The Azure Arc connected cluster this clone creates (servers only)."""

    cluster_name: AzureName
    resource_group: AzureName
    location: Annotated[str, Field(pattern=r"^[a-z0-9]+$")]
    subscription_id: Guid
    tenant_id: Guid
    client_id: Guid
    auth: ArcAuth = ArcAuth.SECRET
    tags: ArcTags = Field(default_factory=dict)
    onboarding_timeout_seconds: Annotated[Int, Field(ge=60, le=3600)] = 600
    # A connected cluster of this name that belongs to another Kubernetes cluster (a stale resource left
    # by a deleted or re-deployed clone): `fail` stops with a remedy; `replace` deletes it, then connects.
    on_conflict: Literal["fail", "replace"] = "fail"
    # Azure cloud endpoints to preflight; region-specific names are derived from `location`.
    cloud: Literal["AzureCloud"] = "AzureCloud"
    features: ArcFeatures = ArcFeatures()


class Kustomization(_Model):
    """One Flux kustomization of a configuration."""

    name: KubeName
    path: Annotated[
        str,
        matching(
            r"^[A-Za-z0-9._/][A-Za-z0-9._/-]*$",
            "must be a repository path: letters, digits, . _ / -, not starting with '-'",
            max_length=1024,
        ),
    ] = "./"
    prune: Bool = True
    depends_on: list[KubeName] = Field(default_factory=list)
    # A Go duration (`10m`, `1h30m`).
    sync_interval: (
        Annotated[str, matching(r"^(\d+(ns|us|ms|s|m|h))+$", "must be a duration such as 10m or 1h30m")]
        | None
    ) = None


class FluxConfiguration(_Model):
    """One `az k8s-configuration flux create`."""

    name: KubeName
    namespace: KubeName = "flux-system"
    scope: Literal["cluster", "namespace"] = "cluster"
    url: Annotated[str, Field(pattern=r"^(https://|ssh://|git@)[^\s]+$")]
    branch: Annotated[
        str,
        matching(
            r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$",
            "must be a branch name: letters, digits, . _ / -, not starting with '-'",
            max_length=255,
        ),
    ] = "main"
    kustomizations: Annotated[list[Kustomization], Field(min_length=1)]
    # Credentials, when the repository needs them, are in secrets.git[name].

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, value: str) -> str:
        if value.startswith("https://") and "@" in value.split("/", 3)[2]:
            raise ValueError("put Git credentials in secrets, not in the URL")
        return value


class FluxConfig(_Model):
    """The Flux extension and its configurations."""

    extension_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")] | None = None
    configurations: list[FluxConfiguration] = Field(default_factory=list)


class OnboardingConfig(_Model):
    """`guestinfo.arcbake.config`: everything a clone needs to onboard, no secrets."""

    schema_version: Literal[1] = CONFIG_SCHEMA_VERSION
    hostname: HostName
    domain: FQDNOrHost | None = None
    k3s: K3sConfig = K3sConfig()
    time: TimeConfig
    dns: DnsConfig = DnsConfig()
    proxy: ProxyConfig = ProxyConfig()
    # Required on the cluster's initialising server; agents and joining servers stop after k3s.
    arc: ArcConfig | None = None
    flux: FluxConfig = FluxConfig()

    @model_validator(mode="after")
    def _server_has_arc(self) -> OnboardingConfig:
        if self.onboards_cluster and self.arc is None:
            raise ValueError("a server node needs an arc section")
        return self

    @property
    def onboards_cluster(self) -> bool:
        """True on the server that starts the cluster (it joins no other) and on the one `builder
        rollout` puts in its place, which joins a surviving server (a new machine with `cluster-init`
        would start a second etcd cluster) and keeps the cluster's `arc`: Arc and Flux run there, once
        per cluster (that replacement finds them already connected by the cluster's own agents); agents
        and joining servers stop once they have joined."""
        return self.k3s.role is Role.SERVER and (not self.k3s.server_url or self.arc is not None)


GitUser = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.@+][A-Za-z0-9_.@+-]*$")]
# ssh known_hosts lines: printable text, one entry per line.
KnownHosts = Annotated[str, Field(max_length=65536, pattern=r"^[\x20-\x7e\n]*$")]


class GitCredential(_Model):
    """Credentials for one Flux configuration's repository."""

    https_user: GitUser | None = None
    https_key: SecretStr | None = None
    ssh_private_key: SecretStr | None = None
    known_hosts: KnownHosts | None = None


# Secrets generations: deploy writes 1, each `builder rotate` one more; a clone keeps the newest it saw.
Generation = Annotated[int, Field(ge=1, le=2**31 - 1)]


class OnboardingSecrets(_Model):
    """`guestinfo.arcbake.secrets`: read once per generation, stored 0600 bound to the instance id, then
    the key is overwritten with `---`. A set with a higher `generation` replaces the one held."""

    generation: Generation = 1
    sp_secret: SecretStr | None = None
    sp_certificate_pem: SecretStr | None = None
    k3s_token: SecretStr | None = None
    git: dict[str, GitCredential] = Field(default_factory=dict)

    def values(self) -> list[str]:
        """Every secret value, for redaction."""
        out = [s.get_secret_value() for s in (self.sp_secret, self.sp_certificate_pem, self.k3s_token) if s]
        for cred in self.git.values():
            out += [s.get_secret_value() for s in (cred.https_key, cred.ssh_private_key) if s]
        return out

    def revealed(self) -> dict[str, Any]:
        """The plain mapping with the values revealed: what deploy writes to the VM and firstboot to
        its 0600 secrets file, and nowhere else."""

        def reveal(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: reveal(v) for k, v in value.items()}
            return value.get_secret_value() if isinstance(value, SecretStr) else value

        return {k: reveal(v) for k, v in self.model_dump(exclude_none=True).items()}


class State(StrEnum):
    """Onboarding state reported in `guestinfo.arcbake.status`."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# A clone runs ten steps; retries of a failed step after reboots add entries. The oldest are dropped past
# this bound, so the status JSON stays small enough for guestinfo (each entry is about 120 bytes).
MAX_STEP_TIMINGS = 32
MAX_NODES_REPORTED = 256
StepName = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_-]+$")]


class StepOutcome(StrEnum):
    """How one run of a step ended (`running` while it has not)."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class StepTiming(_Model):
    """One run of one step: when it started and ended, and how many attempts it took."""

    step: StepName
    started: datetime
    ended: datetime | None = None
    attempts: int = Field(default=1, ge=1, le=100_000)
    outcome: StepOutcome = StepOutcome.RUNNING

    @property
    def seconds(self) -> float | None:
        """Duration in seconds once ended."""
        return None if self.ended is None else max(0.0, (self.ended - self.started).total_seconds())


# The id of one KEY_NODES_DELETE request: the server echoes it in `Status.nodes_delete_id`, so rollout
# takes as confirmation only the report of ITS request (the status keeps the last report, refreshed).
NODES_DELETE_ID_PATTERN = r"^[0-9a-f]{8,32}$"
NodesDeleteId = Annotated[str, StringConstraints(pattern=NODES_DELETE_ID_PATTERN)]


class NodesDeleteRequest(_Model):
    """A KEY_NODES_DELETE value: `ID:name,name` (host names hold no `:`, so the split is unambiguous)."""

    request_id: NodesDeleteId
    names: list[HostName] = Field(min_length=1, max_length=MAX_NODES_REPORTED)

    def to_value(self) -> str:
        return f"{self.request_id}:{','.join(self.names)}"

    @classmethod
    def parse(cls, text: str) -> NodesDeleteRequest:
        """The request in a KEY_NODES_DELETE value; ValueError otherwise."""
        request_id, sep, rest = text.strip().partition(":")
        names = [n.strip() for n in rest.split(",") if n.strip()]
        try:
            if not sep:
                raise ValueError("no request id")
            return cls(request_id=request_id, names=names)
        except ValueError:  # pydantic's ValidationError is one
            raise ValueError(
                f"not `ID:` and a list of up to {MAX_NODES_REPORTED} host names: {text[:80]!r}"
            ) from None


class Status(_Model):
    """`guestinfo.arcbake.status` and /var/lib/arcbake/status.json."""

    state: State
    step: str | None = None
    message: str = ""
    remedy: str | None = None
    updated: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # Per-step timings, oldest first, at most MAX_STEP_TIMINGS (firstboot keeps the newest).
    steps: list[StepTiming] = Field(default_factory=list, max_length=MAX_STEP_TIMINGS)
    # Servers: the cluster's nodes that are Ready, as this server's API sees them when it reports
    # (builder rollout waits for a replaced agent here). Bounded like every guest-written value.
    nodes_ready: list[HostName] = Field(default_factory=list, max_length=MAX_NODES_REPORTED)
    # Servers: the Nodes deleted (or found absent) for the last `KEY_NODES_DELETE` request, and its id.
    nodes_deleted: list[HostName] = Field(default_factory=list, max_length=MAX_NODES_REPORTED)
    nodes_delete_id: NodesDeleteId | None = None
    # The generation of the secrets the clone holds (None before it has read any).
    generation: Generation | None = None

    def to_json(self) -> str:
        """Compact JSON with `updated` as UTC ISO 8601."""
        return self.model_dump_json()
