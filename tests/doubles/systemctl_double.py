"""A `systemctl` double for tests and the bench (stdlib + PyYAML); `tests/doubles/systemctl` runs it.

Records every argv (one JSON line) in `SYSTEMCTL_DOUBLE_LOG`. `enable --now UNIT` / `start UNIT` marks the
unit active (state in `SYSTEMCTL_DOUBLE_STATE`) and, for `k3s`, copies `SYSTEMCTL_DOUBLE_KUBECONFIG` (a
kubeconfig the Kubernetes API double wrote) to `SYSTEMCTL_DOUBLE_ROOT/etc/rancher/k3s/k3s.yaml` with mode
`SYSTEMCTL_DOUBLE_KUBECONFIG_MODE` (octal, default 600), after `SYSTEMCTL_DOUBLE_DELAY` seconds (in a
detached child, like K3s writing it once its API is up). When `SYSTEMCTL_DOUBLE_SCENARIO` names a JSON
scenario, it is posted to the API double (`/_double/objects`) when k3s goes from inactive to active, so
"node Ready after N s" counts from the start of k3s: from the moment this double was exec'd
(`proc_clock.process_started`, passed as the scenario's `since`), as the kubeconfig delay does, because the
real `systemctl` returns in milliseconds and K3s starts then; this double's own interpreter start
(0.1-0.2 s) must not be charged to the program that called it. `SYSTEMCTL_DOUBLE_FAIL=UNIT` fails starting
that unit the way systemd does. `is-active UNIT` answers from the state.

K3s rules (`k3s_rules.py`, flag tables cited in `data/k3s_flags.json`): starting `k3s` (server) or
`k3s-agent` (agent) merges `ROOT/etc/rancher/k3s/config.yaml` and `config.yaml.d/` the way K3s does and
refuses what the real binary of the pinned minor refuses (an agent with a server-only key, a bad value, no
token or server). `SYSTEMCTL_DOUBLE_CLUSTER` names a JSON registry shared by the nodes of a test fleet: an
initialising server registers its token (generated when it has none, as K3s does) under
`SYSTEMCTL_DOUBLE_ADDRESS`; an agent or joining server must name a registered server (a joining server one
with embedded etcd, `cluster-init`) and hold the same token; a joiner whose server has not started yet
waits for it up to `SYSTEMCTL_DOUBLE_JOIN_WAIT` seconds (K3s retries), then is refused. A `cluster-init`
server with no etcd data (`ROOT/var/lib/rancher/k3s/server/db/etcd`, made on its first start) whose address
already has a cluster with other servers is refused: real K3s would start a second etcd cluster beside
them (`k3s_rules.etcd_start`, cited there). A refused start
marks the unit `failed`, appends K3s's message to `SYSTEMCTL_DOUBLE_JOURNAL` and writes no kubeconfig;
`--no-block` still exits 0, as systemd does once the job is queued. An agent that starts gets the kubelet
kubeconfig (`/var/lib/rancher/k3s/agent/kubelet.kubeconfig`). Each node registers under its node name
(`node-name`, else `ROOT/etc/hostname`, else its address) with its node password
(`ROOT/etc/rancher/node/password`, generated on first start): a name the cluster holds another password
for is refused until `k3s_rules.delete_node` frees it (`k3s_rules.admit_node`, the K3s node-password rule).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from doubles import k3s_rules
from doubles.proc_clock import process_started

ROLE_OF_UNIT = {"k3s": "server", "k3s-agent": "agent"}
KUBECONFIG_OF_ROLE = {
    "server": "etc/rancher/k3s/k3s.yaml",
    "agent": "var/lib/rancher/k3s/agent/kubelet.kubeconfig",
}


def _log(argv: list[str]) -> None:
    path = os.environ.get("SYSTEMCTL_DOUBLE_LOG")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps({"argv": argv, "time": time.time()}) + "\n")


def _state() -> tuple[Path | None, dict[str, str]]:
    raw = os.environ.get("SYSTEMCTL_DOUBLE_STATE")
    if not raw:
        return None, {}
    path = Path(raw)
    return path, json.loads(path.read_text()) if path.exists() else {}


def _post_scenario(kubeconfig: str, started: float) -> None:
    scenario = os.environ.get("SYSTEMCTL_DOUBLE_SCENARIO")
    if not scenario:
        return
    import re
    import urllib.request

    match = re.search(r"server:\s*(\S+)", Path(kubeconfig).read_text())
    if not match:
        return
    body = _scenario_since(Path(scenario), started)
    req = urllib.request.Request(  # noqa: S310 - the loopback URL of the API double
        match[1].rstrip("/") + "/_double/objects", data=body, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=5) as resp:
        resp.read()


def _scenario_since(scenario: Path, started: float) -> bytes:
    """The scenario file with `since`: its times count from when K3s was started."""
    body = json.loads(scenario.read_text())
    body.setdefault("since", started)
    return json.dumps(body).encode()


def _journal(unit: str, message: str) -> None:
    path = os.environ.get("SYSTEMCTL_DOUBLE_JOURNAL")
    if path:
        with Path(path).open("a") as fh:
            fh.write(json.dumps({"unit": unit, "message": message}) + "\n")


def _join(root: Path, role: str) -> None:
    """The K3s rules for this node's config, then its place in the shared cluster registry."""
    node, token = k3s_rules.check_node(root, role)
    registry_path = os.environ.get("SYSTEMCTL_DOUBLE_CLUSTER")
    if not registry_path:
        return
    registry = Path(registry_path)
    # K3s keeps retrying a server that is not up yet; the double waits up to SYSTEMCTL_DOUBLE_JOIN_WAIT s.
    deadline = time.monotonic() + float(os.environ.get("SYSTEMCTL_DOUBLE_JOIN_WAIT", "0") or 0)
    while True:
        # Nodes of a test fleet boot in parallel: one writer at a time.
        with Path(registry_path + ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            clusters = json.loads(registry.read_text()) if registry.exists() else {}
            try:
                _register(clusters, node, token, role)
            except ServerNotUp:
                if time.monotonic() >= deadline:
                    raise
            else:
                registry.write_text(json.dumps(clusters, indent=1))
                return
        time.sleep(0.1)


class ServerNotUp(k3s_rules.K3sRefused):
    """The server a node joins has not started (yet)."""


def _node_name(root: Path, node: k3s_rules.NodeConfig, address: str) -> str:
    hostname = root / "etc/hostname"
    return node.get("node-name") or (hostname.read_text().strip() if hostname.is_file() else "") or address


def _register(
    clusters: dict[str, dict[str, Any]], node: k3s_rules.NodeConfig, token: str | None, role: str
) -> None:
    address = os.environ.get("SYSTEMCTL_DOUBLE_ADDRESS", "")
    root = Path(os.environ.get("SYSTEMCTL_DOUBLE_ROOT", "/"))
    name, password = _node_name(root, node, address), k3s_rules.node_password(root)
    server = node.get("server")
    if server is None:
        # An initialising server: K3s generates a token when none is configured. Without etcd data, a
        # `cluster-init` server beside live etcd members would form a second cluster (k3s_rules.etcd_start).
        before = clusters.get(address, {})
        live = [
            m["address"]
            for m in before.get("members", [])
            if m["role"] == "server" and m["address"] != address
        ]
        data = root / k3s_rules.ETCD_DATA_DIR
        cluster_init = node.flag("cluster-init")
        started = k3s_rules.etcd_start(
            cluster_init=cluster_init, server=None, initialized=data.is_dir(), live_members=live
        )
        if started == "member" and before:
            return  # a restart: the member it was, its cluster as registered
        if cluster_init and os.environ.get("SYSTEMCTL_DOUBLE_ROOT"):
            data.mkdir(parents=True, exist_ok=True)
        clusters[address] = {
            "token": token or f"K10{secrets.token_hex(16)}",
            "etcd": node.flag("cluster-init"),
            "members": [{"address": address, "role": role, "init": True}],
            "passwords": {name: password},
        }
        return
    host = urlsplit(server).hostname or ""
    entry = clusters.get(host)
    if entry is not None and "alias_of" in entry:
        # A server that joined: it serves its cluster's supervisor API too.
        host = entry["alias_of"]
        entry = clusters[host]
    if entry is None:
        raise ServerNotUp(f"failed to get CA certs: Get {server}/cacerts: connection refused")
    if token != entry["token"]:
        raise k3s_rules.K3sRefused(
            f"failed to validate token: token CA hash does not match the server's ({server})"
        )
    if role == "server" and not entry["etcd"]:
        raise k3s_rules.K3sRefused(
            f"{server} runs without embedded etcd: a server joins only a cluster started with --cluster-init"
        )
    k3s_rules.admit_node(entry.setdefault("passwords", {}), name, password)
    entry["members"].append({"address": address, "role": role, "init": False})
    if role == "server":
        clusters[address] = {"alias_of": host}


def _start_k3s(role: str, first_start: bool) -> None:
    src = os.environ.get("SYSTEMCTL_DOUBLE_KUBECONFIG")
    root = os.environ.get("SYSTEMCTL_DOUBLE_ROOT")
    if not src or not root:
        return
    delay = float(os.environ.get("SYSTEMCTL_DOUBLE_DELAY", "0") or 0)
    mode = int(os.environ.get("SYSTEMCTL_DOUBLE_KUBECONFIG_MODE", "600"), 8)
    started = process_started()  # before the fork: a forked child's starttime is its own
    if first_start:
        # Each node's scenario registers that node (and, for the first server, CoreDNS) as it starts.
        _post_scenario(src, started)
    if delay > 0:
        if os.fork() != 0:
            return
        # Detached like a started service: do not hold the caller's output pipes open.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    # The delay counts from when K3s was started (this double's exec), not from after its imports.
    time.sleep(max(0.0, delay - (time.monotonic() - started)))
    dest = Path(root) / KUBECONFIG_OF_ROLE[role]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".k3s.yaml.tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(mode)
    tmp.replace(dest)
    if delay > 0:
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `tests/doubles/systemctl`."""
    args = sys.argv[1:] if argv is None else argv
    _log(args)
    words = [a for a in args if not a.startswith("-")]
    if not words:
        return 0
    verb, units = words[0], [u.removesuffix(".service") for u in words[1:]]
    path, state = _state()
    if verb in ("enable", "start", "restart") and ("start" in verb or "--now" in args):
        for unit in units:
            if unit == os.environ.get("SYSTEMCTL_DOUBLE_FAIL"):
                print(
                    f"Job for {unit}.service failed because the control process exited with error code.\n"
                    f'See "systemctl status {unit}.service" and "journalctl -xeu {unit}.service" '
                    "for details.",
                    file=sys.stderr,
                )
                return 1
            first_start = state.get(unit) != "active"
            role = ROLE_OF_UNIT.get(unit)
            root = os.environ.get("SYSTEMCTL_DOUBLE_ROOT")
            if role and root and first_start:
                try:
                    _join(Path(root), role)
                except k3s_rules.K3sRefused as exc:
                    state[unit] = "failed"
                    _journal(unit, str(exc))
                    if path is not None:
                        path.write_text(json.dumps(state))
                    if "--no-block" in args:
                        return 0
                    print(f"Job for {unit}.service failed: {exc}", file=sys.stderr)
                    return 1
            state[unit] = "active"
            if role:
                _start_k3s(role, first_start)
    elif verb == "is-active":
        active = all(state.get(u) == "active" for u in units)
        print("\n".join(state.get(u, "inactive") for u in units))
        return 0 if active else 3
    if path is not None:
        path.write_text(json.dumps(state))
    return 0
