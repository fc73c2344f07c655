"""The proxy environment and NO_PROXY, derived once from the contract's proxy and K3s network.

Used at bake time (builder's render context: the template's profile.d and k3s.service.env, Packer's
provisioner environment) and at first boot (firstboot's proxy step and every child process, Arc's
`--proxy-skip-range`), so a template and its clones agree on what bypasses the proxy.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from firstboot import quoting
from firstboot.contract import K3sConfig, K3sNetwork, ProxyConfig

# The proxy's CA in the guest (written by the proxy step; given to az, the probes and update-ca-trust).
CA_FILE = "/etc/pki/ca-trust/source/anchors/arcbake-proxy-ca.pem"
# Names a cluster resolves itself: never through the proxy.
CLUSTER_NAMES = ("kubernetes.default.svc", ".svc.cluster.local", ".svc", ".cluster.local")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _unique(items: list[str]) -> list[str]:
    return [i for i in dict.fromkeys(items) if i]


def node_entries(k3s: K3sNetwork) -> list[str]:
    """A clone's own cluster: its node network(s) and nodes' addresses (from the fleet), and the server it
    joins (the host of `server_url`). Empty at bake time, when the template knows no nodes."""
    if not isinstance(k3s, K3sConfig):
        return []
    server = urlsplit(k3s.server_url).hostname if k3s.server_url else None
    return [*k3s.cluster_addresses, *([server] if server else [])]


def no_proxy_list(proxy: ProxyConfig, k3s: K3sNetwork) -> list[str]:
    """NO_PROXY for a node: loopback, the cluster's CIDRs and names, its nodes and server (agents reach
    https://<server>:6443 directly), then the configured exceptions."""
    base = [*LOOPBACK, str(k3s.cluster_cidr), str(k3s.service_cidr), *CLUSTER_NAMES, *node_entries(k3s)]
    return _unique([*base, *proxy.no_proxy])


def proxy_skip_range(proxy: ProxyConfig, k3s: K3sNetwork) -> str:
    """Arc's `--proxy-skip-range`: service and pod CIDRs, cluster names, then `proxy.no_proxy`."""
    items = [str(k3s.service_cidr), str(k3s.cluster_cidr), *CLUSTER_NAMES, *proxy.no_proxy]
    return ",".join(_unique(items))


def proxy_environment(proxy: ProxyConfig, k3s: K3sNetwork) -> dict[str, str]:
    """Proxy variables in both spellings (curl and libcurl read only the lower case `http_proxy`, Go
    programs either); empty when no proxy is configured. Upper case first, in a stable order."""
    if not proxy.enabled:
        return {}
    upper: dict[str, str] = {}
    if proxy.http_proxy:
        upper["HTTP_PROXY"] = proxy.http_proxy
    if proxy.https_proxy:
        upper["HTTPS_PROXY"] = proxy.https_proxy
    upper["NO_PROXY"] = ",".join(no_proxy_list(proxy, k3s))
    return {**upper, **{k.lower(): v for k, v in upper.items()}}


def k3s_env_lines(proxy: ProxyConfig, k3s: K3sNetwork) -> list[str]:
    """`k3s.service.env` lines (systemd environment file): the proxy for K3s, and `CONTAINERD_*` for its
    embedded containerd, which reads only those."""
    upper = {k: quoting.systemd_env(v) for k, v in proxy_environment(proxy, k3s).items() if k.isupper()}
    return [f"{k}={v}" for k, v in upper.items()] + [f"CONTAINERD_{k}={v}" for k, v in upper.items()]


def profile_lines(proxy: ProxyConfig, k3s: K3sNetwork) -> list[str]:
    """`/etc/profile.d/arcbake-proxy.sh` lines (POSIX shell): the proxy for login shells and az."""
    return [f"export {k}={quoting.shell(v)}" for k, v in proxy_environment(proxy, k3s).items()]


def ca_path(proxy: ProxyConfig) -> str | None:
    """The guest path of the proxy's CA bundle when the config has one, else None."""
    return CA_FILE if proxy.ca_bundle_pem else None
